//! What the shim quotes when the guest leaves an agent call unanswered, beside the log tails:
//! where each virtio queue of the VM stands (eci-vmm's control socket) and the CPU each thread
//! of eci-vmm and virtiofsd used over half a second. Queues whose requests are all answered and
//! idle vCPU threads mean a guest waiting for something (a pending interrupt status: one it
//! never took); requests left in an avail ring point at that device's backend; a busy vCPU
//! thread is a guest at work or spinning.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::paths::{read_pid, PodPaths};

/// eci-vmm's control socket in the pod's socket directory.
pub const VMM_SOCKET: &str = "vmm.sock";
/// Longest `info` answer read from eci-vmm (a few hundred bytes per device).
const MAX_INFO: u64 = 64 * 1024;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(1);
const SAMPLE: Duration = Duration::from_millis(500);

/// Blocks for about half a second (at most a few on a wedged VMM): an error path only.
pub fn report(pod: &PodPaths) -> String {
    let queues = match query_info(&pod.socket_dir().join(VMM_SOCKET)) {
        Ok(info) => summarize_devices(&info),
        Err(e) => format!("(no answer: {e})"),
    };
    let pids = [
        ("eci-vmm", read_pid(&pod.pid_file())),
        ("virtiofsd", read_pid(&pod.virtiofsd_pid_file())),
    ];
    let before: Vec<_> = pids.iter().map(|(_, pid)| thread_times(*pid)).collect();
    std::thread::sleep(SAMPLE);
    let threads: Vec<String> = pids
        .iter()
        .zip(before)
        .map(|((name, pid), before)| {
            format!(
                "{name}: {}",
                activity(&before, &thread_times(*pid), ticks_per_ms())
            )
        })
        .collect();
    format!(
        "eci-vmm devices: {queues}; threads (CPU ms in {} ms): {}",
        SAMPLE.as_millis(),
        threads.join("; ")
    )
}

fn query_info(socket: &Path) -> std::io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    stream.write_all(b"{\"op\":\"info\"}\n")?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_INFO)).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// `fs: status 0xf, interrupt 0x1, queues avail/used 12/12 40/39`, one per device.
fn summarize_devices(info: &serde_json::Value) -> String {
    let Some(devices) = info["devices"].as_array() else {
        return format!("(unexpected answer: {info})");
    };
    let index = |v: &serde_json::Value| v.as_u64().map_or("?".into(), |n| n.to_string());
    devices
        .iter()
        .map(|d| {
            let progress = &d["progress"];
            let queues: Vec<String> = progress["queues"]
                .as_array()
                .map(|qs| {
                    qs.iter()
                        .map(|q| match q.is_null() {
                            true => "-".into(),
                            false => format!("{}/{}", index(&q["avail"]), index(&q["used"])),
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{}: status {:#x}, interrupt {:#x}, queues avail/used {}",
                d["kind"].as_str().unwrap_or("?"),
                progress["driver_status"].as_u64().unwrap_or(0),
                progress["interrupt_status"].as_u64().unwrap_or(0),
                queues.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One thread's name, state and CPU ticks (user + system).
#[derive(Debug, Clone, PartialEq)]
struct ThreadTime {
    tid: i32,
    name: String,
    state: char,
    ticks: u64,
}

fn thread_times(pid: Option<i32>) -> Vec<ThreadTime> {
    let Some(tasks) = pid
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|p| p.tasks().ok())
    else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.stat().ok())
        .map(|s| ThreadTime {
            tid: s.pid,
            name: s.comm,
            state: s.state,
            ticks: s.utime + s.stime,
        })
        .collect()
}

fn ticks_per_ms() -> f64 {
    procfs::ticks_per_second() as f64 / 1000.0
}

/// `vcpu0 R 480, vcpu1 S 0, eci-vmm S 2` from two samples; threads of one name (virtiofsd's
/// pool) are summed into one entry with their count.
fn activity(before: &[ThreadTime], after: &[ThreadTime], ticks_per_ms: f64) -> String {
    if after.is_empty() {
        return "(gone)".into();
    }
    let mut by_name: Vec<(String, usize, String, u64)> = Vec::new();
    for t in after {
        let earlier = before
            .iter()
            .find(|b| b.tid == t.tid)
            .map_or(t.ticks, |b| b.ticks);
        let used = t.ticks.saturating_sub(earlier);
        match by_name.iter_mut().find(|(name, ..)| *name == t.name) {
            Some((_, count, states, ticks)) => {
                *count += 1;
                if !states.contains(t.state) {
                    states.push(t.state);
                }
                *ticks += used;
            }
            None => by_name.push((t.name.clone(), 1, t.state.to_string(), used)),
        }
    }
    by_name
        .into_iter()
        .map(|(name, count, states, ticks)| {
            let ms = (ticks as f64 / ticks_per_ms).round();
            match count {
                1 => format!("{name} {states} {ms}"),
                n => format!("{name} x{n} {states} {ms}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: i32, name: &str, state: char, ticks: u64) -> ThreadTime {
        ThreadTime {
            tid,
            name: name.into(),
            state,
            ticks,
        }
    }

    #[test]
    fn activity_names_each_thread_and_sums_a_pool() {
        let before = [
            thread(1, "eci-vmm", 'S', 10),
            thread(2, "vcpu0", 'R', 100),
            thread(3, "pool", 'S', 5),
            thread(4, "pool", 'S', 7),
        ];
        let after = [
            thread(1, "eci-vmm", 'S', 10),
            thread(2, "vcpu0", 'R', 148),
            thread(3, "pool", 'S', 6),
            thread(4, "pool", 'D', 8),
            thread(5, "pool", 'S', 1),
        ];
        assert_eq!(
            activity(&before, &after, 0.1),
            "eci-vmm S 0, vcpu0 R 480, pool x3 SD 20"
        );
        assert_eq!(activity(&before, &[], 0.1), "(gone)");
    }

    #[test]
    fn devices_read_as_status_interrupt_and_queue_positions() {
        let info = serde_json::json!({"ok": true, "devices": [
            {"kind": "vsock", "progress": {"driver_status": 15, "interrupt_status": 1,
                "queues": [{"size": 256, "avail": 9, "used": 9}, null]}},
            {"kind": "fs", "progress": {"driver_status": 15, "interrupt_status": 0,
                "queues": [{"size": 1024, "avail": 40, "used": 39}]}},
        ]});
        assert_eq!(
            summarize_devices(&info),
            "vsock: status 0xf, interrupt 0x1, queues avail/used 9/9 -, \
             fs: status 0xf, interrupt 0x0, queues avail/used 40/39"
        );
        let refused = serde_json::json!({"ok": false, "error": "x"});
        assert!(summarize_devices(&refused).starts_with("(unexpected answer"));
    }

    #[test]
    fn a_live_vmm_is_asked_for_its_devices() {
        let dir = tempfile::tempdir().unwrap();
        let pod = PodPaths::at(dir.path().to_path_buf());
        std::fs::create_dir(pod.socket_dir()).unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(pod.socket_dir().join(VMM_SOCKET)).unwrap();
        let vmm = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let answer = serde_json::json!({"ok": true, "devices": [{"kind": "fs",
                "progress": {"driver_status": 15, "interrupt_status": 1,
                "queues": [{"size": 1024, "avail": 3, "used": 2}]}}]});
            (&stream)
                .write_all(format!("{answer}\n").as_bytes())
                .unwrap();
            request
        });
        std::fs::write(pod.pid_file(), std::process::id().to_string()).unwrap();
        let text = report(&pod);
        assert_eq!(vmm.join().unwrap().trim(), r#"{"op":"info"}"#);
        assert!(
            text.contains("fs: status 0xf, interrupt 0x1, queues avail/used 3/2"),
            "{text}"
        );
        assert!(text.contains("; virtiofsd: (gone)"), "{text}");
        assert!(
            !text.contains("eci-vmm: (gone)"),
            "this process stood in: {text}"
        );
    }

    #[test]
    fn a_vmm_that_is_gone_is_reported_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let pod = PodPaths::at(dir.path().to_path_buf());
        let started = std::time::Instant::now();
        let text = report(&pod);
        assert!(text.contains("eci-vmm devices: (no answer"), "{text}");
        assert!(
            text.contains("eci-vmm: (gone); virtiofsd: (gone)"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn threads_of_a_live_process_are_sampled() {
        let me = std::process::id() as i32;
        let times = thread_times(Some(me));
        assert!(times.iter().any(|t| t.tid == me), "{times:?}");
        assert!(activity(&times, &times, ticks_per_ms()).contains(" 0"));
    }
}
