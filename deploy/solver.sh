#!/bin/sh
# Copies cvc5 (installed from Debian) and the shared libraries it needs that the distroless
# `cc` image lacks into the directory $1, at the paths they will have in the image, for the
# Dockerfile's runtime stage to COPY whole. The libraries distroless cc already has (glibc,
# libstdc++, libgcc_s) are left out; tests/it/deploy.rs runs this script and checks that what
# it copies is all cvc5 needs.
set -eu
dest=$1
bin=$(command -v cvc5)
mkdir -p "$dest/usr/local/bin"
cp -L "$bin" "$dest/usr/local/bin/cvc5"
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
  name=$(basename "$lib")
  case "$name" in
    libc.so.* | libm.so.* | libstdc++.so.* | libgcc_s.so.* | ld-linux*) ;;
    *)
      # The directory's real path (/lib is /usr/lib on a merged-/usr system), the soname kept.
      dir=$(readlink -f "$(dirname "$lib")")
      mkdir -p "$dest$dir"
      cp -L "$lib" "$dest$dir/$name"
      ;;
  esac
done
