//! A PostgreSQL cluster of a test's own (initdb in a scratch directory, its own port), to kill,
//! stop and restart at will without touching the shared server on 5432.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// A PostgreSQL cluster of the test's own (initdb in a scratch directory, its own port), to
/// kill and stop at will.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server's tools as this user (the server refuses to run as root).
    as_user: Option<&'static str>,
}

impl PrivatePg {
    /// None (after saying so loudly) when PostgreSQL's server tools are missing outside CI.
    pub fn start() -> Option<PrivatePg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(|v| v.ok().map(|v| v.path().join("bin")))
                    .find(|b| b.join("initdb").exists())
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "PostgreSQL's server tools (initdb) are required in CI"
            );
            eprintln!("\n*** SKIPPED: no initdb under /usr/lib/postgresql ***\n");
            return None;
        };
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        let as_user = root.then_some("postgres");
        let dir = tempfile::tempdir().unwrap();
        if as_user.is_some() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            dir,
            bin,
            port,
            as_user,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        pg.start_server();
        Some(pg)
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn run(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut c = match self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would (no checkpoint, no goodbye to clients).
    pub fn kill(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }

    /// Stops the server the way an operator does (`pg_ctl stop -m fast`: clients are told
    /// "terminating connection due to administrator command").
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "stop"]);
    }

    /// Starts it again, without the synchronous standby a round asked for.
    pub fn restart(&self) {
        let auto = self.dir.path().join("data/postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.contains("synchronous_standby_names"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&auto, kept).unwrap();
        self.start_server();
    }

    /// The server's processes: the postmaster and its children.
    pub fn pids(&self) -> Vec<u32> {
        // None while the server is down.
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")) else {
            return Vec::new();
        };
        let main: u32 = text.lines().next().unwrap().trim().parse().unwrap();
        let mut out = vec![main];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(main) {
                out.extend(
                    entry
                        .file_name()
                        .to_str()
                        .and_then(|p| p.parse::<u32>().ok()),
                );
            }
        }
        out
    }

    /// Signals the postmaster and its children; a child that ended in between (a backend
    /// whose client went away) is no longer there to signal, which is fine.
    pub fn signal_all(&self, sig: &str) {
        let pids = self.pids();
        assert!(!pids.is_empty(), "the private cluster is not running");
        signal(pids[0], sig);
        for pid in &pids[1..] {
            let ok = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(
                ok.success() || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "kill {sig} {pid}"
            );
        }
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?application_name=outcomes&connect_timeout=2",
            self.port
        )
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let mut c = match self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let _ = c.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// A connection to the private cluster, retried while it starts.
pub async fn admin_retry(port: u16) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2"),
            tokio_postgres::NoTls,
        )
        .await;
        match connected {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the private cluster: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
