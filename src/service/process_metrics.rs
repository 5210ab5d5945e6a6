//! The process's own figures in Prometheus's standard names (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, ...), read from `/proc/self` at scrape time, so that an
//! operator sees a replica's memory and CPU beside its other metrics. Linux only: elsewhere
//! the collector writes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// The kernel's clock ticks per second in `/proc` (USER_HZ, 100 on Linux's user ABI).
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
pub struct ProcessCollector {
    started_unix: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        ProcessCollector {
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// A `kB` line of `/proc/self/status` (`VmRSS:  1234 kB`), in bytes.
fn status_kb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024.0)
}

/// User plus system CPU seconds, from `/proc/self/stat` (fields 14 and 15).
fn cpu_seconds(stat: &str) -> Option<f64> {
    // After the command name in parentheses, fields start at 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return Ok(());
        };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        if let Some(cpu) = cpu_seconds(&stat) {
            let enc = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(enc)?;
        }
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64);
        let threads = status
            .lines()
            .find(|l| l.starts_with("Threads:"))
            .and_then(|l| l["Threads:".len()..].trim().parse::<f64>().ok());
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                status_kb(&status, "VmRSS:"),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                status_kb(&status, "VmSize:"),
            ),
            ("process_open_fds", "Open file descriptors", open_fds.ok()),
            ("process_threads", "Operating system threads", threads),
            (
                "process_start_time_seconds",
                "When the process started (its metrics began), in seconds since the Unix epoch",
                Some(self.started_unix),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(enc)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_formats() {
        let stat = "4711 (blue authz) S 1 4711 4711 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        let status = "Name:\tblue-authz\nVmSize:\t  2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(1024.0 * 1024.0));
        assert_eq!(status_kb(status, "VmSize:"), Some(2048.0 * 1024.0));
    }
}
