//! A Cedar JSON entities file read one entity at a time: the array is decoded element by
//! element from a reader, so a file of any size costs the memory of one entity (and the
//! reader's buffer), not of the whole file and its parsed tree.

use std::io::Read;

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde_json::Value;

use crate::engine::error::DataError;

/// Calls `f` with each element of the JSON array `reader` holds, in order, with its index;
/// stops at the first error of `f` (returned as is) or of the JSON (naming `what`). Returns
/// how many elements there were.
pub fn each_in_array(
    reader: impl Read,
    what: &str,
    f: &mut dyn FnMut(usize, Value) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let mut failed = None;
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 20, reader));
    let read = Elements {
        f,
        failed: &mut failed,
    }
    .deserialize(&mut de)
    .and_then(|n| de.end().map(|()| n));
    match (read, failed) {
        (_, Some(e)) => Err(e),
        (Ok(n), None) => Ok(n),
        (Err(source), None) => Err(DataError::Json {
            what: what.to_string(),
            source,
        }),
    }
}

struct Elements<'a> {
    f: &'a mut dyn FnMut(usize, Value) -> Result<(), DataError>,
    failed: &'a mut Option<DataError>,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of entities")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            if let Err(e) = (self.f)(n, v) {
                *self.failed = Some(e);
                return Err(A::Error::custom("stopped"));
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_come_one_by_one_and_errors_name_the_input() {
        let mut seen = Vec::new();
        let n = each_in_array(&b"[1, {\"a\": 2}, 3]"[..], "t", &mut |i, v| {
            seen.push((i, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen[1].1["a"], 2);
        let e = each_in_array(&b"{\"not\": \"an array\"}"[..], "file.json", &mut |_, _| {
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("file.json"), "{e}");
        let e = each_in_array(&b"[1, 2"[..], "file.json", &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("file.json"), "{e}");
    }
}
