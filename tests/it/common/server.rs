//! The one harness that starts the real binary. [`Binary`] builds the command line (for
//! `serve`: a pack, a database, decisions on 127.0.0.1:0 and the other listeners off unless
//! asked for); [`Binary::spawn`] starts it and learns its bound addresses from the structured
//! start-up line (`{"blue_authz": "listening", ...}` on standard error), never from log prose.
//! The process is killed when its [`Server`] is dropped. Its log is kept, and tests wait on it
//! (a line, the `serving` line, an exit) rather than sleeping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_blue-authz");

/// How long start-up may take on a loaded machine (the gate runs every suite, and the proofs
/// when cvc5 is there) before a test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A command line for the binary.
pub struct Binary {
    cmd: Command,
    /// Flags with a default value, each left out if the arguments given set it too.
    defaults: Vec<(&'static str, std::ffi::OsString)>,
    args: Vec<std::ffi::OsString>,
    shell_prefix: Option<String>,
}

impl Default for Binary {
    fn default() -> Self {
        Binary::new()
    }
}

impl Binary {
    /// `blue-authz`, standard output discarded, standard error read by the harness.
    pub fn new() -> Self {
        Binary::from_command(Command::new(BIN))
    }

    /// A command line already built for the binary (its arguments, environment and
    /// directory kept); standard output discarded, standard error read by the harness.
    pub fn from_command(mut cmd: Command) -> Self {
        assert_eq!(
            cmd.get_program(),
            BIN,
            "the harness starts the binary under test"
        );
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Binary {
            cmd,
            defaults: Vec::new(),
            args: Vec::new(),
            shell_prefix: None,
        }
    }

    /// `blue-authz serve --policies <pack> --db <db>`, decisions on 127.0.0.1:0, no data or
    /// HTTP listener, no watching: each a default that an argument given later replaces.
    pub fn serve(pack: &Path, db: &Path) -> Self {
        let mut b = Binary::new().arg("serve");
        b.defaults = vec![
            ("--policies", pack.into()),
            ("--db", db.into()),
            ("--listen", "127.0.0.1:0".into()),
            ("--data-listen", "".into()),
            ("--http-listen", "".into()),
            ("--watch", "false".into()),
        ];
        b
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(a.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Standard output piped to the test (the decision log), rather than discarded.
    pub fn stdout_piped(mut self) -> Self {
        self.cmd.stdout(Stdio::piped());
        self
    }

    /// Runs through `sh -c '<prefix> exec blue-authz ...'`, so that the prefix (`ulimit -n
    /// 64;`) applies to the server.
    pub fn shell_prefix(mut self, prefix: &str) -> Self {
        self.shell_prefix = Some(prefix.to_string());
        self
    }

    fn command(mut self) -> Command {
        let given = |flag: &str| {
            self.args.iter().any(|a| {
                let a = a.to_string_lossy();
                a == flag || a.starts_with(&format!("{flag}="))
            })
        };
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        for (flag, value) in &self.defaults {
            if !given(flag) {
                args.push(flag.into());
                args.push(value.clone());
            }
        }
        // The subcommand first, then the defaults, then the arguments given.
        let mut rest = self.args.clone().into_iter();
        let all: Vec<std::ffi::OsString> = match self.defaults.is_empty() {
            true => rest.collect(),
            false => rest.next().into_iter().chain(args).chain(rest).collect(),
        };
        self.cmd.args(&all);
        let Some(prefix) = self.shell_prefix else {
            return self.cmd;
        };
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let args: Vec<String> = self.cmd.get_args().map(quote).collect();
        let script = format!("{prefix} exec {} {}", quote(BIN.as_ref()), args.join(" "));
        let mut sh = Command::new("sh");
        sh.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh
    }

    /// Runs to completion (a CLI command, or a start-up that must be refused).
    pub fn output(self) -> Output {
        self.command().output().expect("run blue-authz")
    }

    /// Starts the process and waits for its `listening` line (the process's exit first is a
    /// panic with its log).
    pub fn spawn(self) -> Server {
        let mut child = self.command().spawn().expect("spawn blue-authz");
        let stdout = child.stdout.take();
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("standard error is piped");
        let writer = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                writer.push(line);
            }
            writer.close();
        });
        let mut server = Server {
            child,
            started: Started::default(),
            log,
            stdout,
        };
        server.started = server
            .wait_started("listening")
            .unwrap_or_else(|log| panic!("blue-authz did not start listening:\n{log}"));
        server
    }
}

/// What the start-up line says: the process and every bound address.
#[derive(Debug, Default, Clone)]
pub struct Started {
    pub pid: u32,
    pub decisions: Option<SocketAddr>,
    pub decisions_unix: Option<PathBuf>,
    pub data: Option<SocketAddr>,
    pub data_unix: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// On the `serving` line: the live policy version and store revision.
    pub policy_version: Option<String>,
    pub revision: Option<u64>,
}

impl Started {
    /// The start-up line of `event`, if `line` is one.
    pub fn parse(line: &str, event: &str) -> Option<Started> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        if v.get("blue_authz")?.as_str()? != event {
            return None;
        }
        let addr = |k: &str| v.get(k)?.as_str()?.parse().ok();
        let path = |k: &str| v.get(k)?.as_str().map(PathBuf::from);
        Some(Started {
            pid: v.get("pid")?.as_u64()? as u32,
            decisions: addr("decisions"),
            decisions_unix: path("decisions_unix"),
            data: addr("data"),
            data_unix: path("data_unix"),
            http: addr("http"),
            health: addr("health"),
            metrics: addr("metrics"),
            policy_version: v
                .get("policy_version")
                .and_then(|p| p.as_str())
                .map(String::from),
            revision: v.get("revision").and_then(serde_json::Value::as_u64),
        })
    }
}

/// The lines of a process's standard error, as they come, and whether it has closed.
#[derive(Default)]
pub struct Log {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        self.state.lock().unwrap().0.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }

    /// Waits until a line from `from` on satisfies `found`: its index and text; None if the
    /// log closes or the time runs out first.
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        let mut checked = from;
        loop {
            while checked < state.0.len() {
                if found(&state.0[checked]) {
                    return Some((checked, state.0[checked].clone()));
                }
                checked += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.1 || left.is_zero() {
                return None;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits until the log closes (the process ended); false if the time ran out.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while !state.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
        true
    }

    pub fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().0.len()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// A running `blue-authz`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// The `listening` line (or, after [`Server::wait_serving`], the `serving` line).
    pub started: Started,
    pub log: Arc<Log>,
    /// Standard output, if [`Binary::stdout_piped`].
    pub stdout: Option<ChildStdout>,
}

impl Server {
    fn wait_started(&self, event: &str) -> Result<Started, String> {
        self.log
            .wait_from(0, START_TIMEOUT, |l| Started::parse(l, event).is_some())
            .and_then(|(_, l)| Started::parse(&l, event))
            .ok_or_else(|| self.log.text())
    }

    /// Waits for the `serving` line: the policies and data are loaded and calls answered. A
    /// process that ends first, or takes longer than [`START_TIMEOUT`], is a panic with its log.
    pub fn wait_serving(&mut self) -> &Started {
        self.started = self
            .wait_started("serving")
            .unwrap_or_else(|log| panic!("blue-authz did not start serving:\n{log}"));
        &self.started
    }

    /// Waits until the process serves (Ok) or ends without serving (its exit status); a panic
    /// after [`START_TIMEOUT`].
    pub fn serves(&mut self) -> Result<&Started, ExitStatus> {
        match self.wait_started("serving") {
            Ok(started) => {
                self.started = started;
                Ok(&self.started)
            }
            Err(log) => {
                assert!(
                    self.log.wait_closed(Duration::ZERO),
                    "blue-authz neither served nor ended in {START_TIMEOUT:?}:\n{log}"
                );
                Err(self.child.wait().unwrap())
            }
        }
    }

    /// The decision service's address.
    pub fn decisions(&self) -> SocketAddr {
        self.started.decisions.expect("a decision listener")
    }

    /// Waits (up to `timeout`) for a log line containing `needle`, from the start of the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.log
            .wait_from(0, timeout, |l| l.contains(needle))
            .map(|(_, l)| l)
    }

    /// Sends a signal (`-HUP`, `-TERM`, `-KILL`) to the server process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.started.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {signal} {}", self.started.pid);
    }

    /// Waits (up to `timeout`) for the process to end; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        assert!(
            self.log.wait_closed(timeout),
            "blue-authz still runs after {timeout:?}:\n{}",
            self.log.text()
        );
        self.child.wait().unwrap()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
