//! The end of a pod's VM: eci-vmm and virtiofsd each end the other, and what ended first says
//! why in eci-vmm's log, which a failed boot's or a stalled call's error quotes.

use std::{path::Path, time::Duration};

use tokio::sync::oneshot;

use super::process;

/// How long eci-vmm may take to end after virtiofsd did before the shim ends it. A VM that
/// stopped on its own (a guest reset or triple fault) closes its devices, which ends
/// virtiofsd, then releases the guest's memory (slow in an emulated host) and only then
/// exits, having logged why.
pub const VMM_EXIT_GRACE: Duration = Duration::from_secs(5);

/// A child and the receiver of its exit status (from the shim's reaper).
pub struct Watched {
    pub pid: i32,
    pub exit: oneshot::Receiver<i32>,
}

/// Waits until both have ended, ending the other when one does, and returns eci-vmm's status.
pub async fn both_ended(mut vmm: Watched, mut fs: Watched, vmm_log: &Path) -> i32 {
    let vmm_pid = vmm.pid;
    let code = tokio::select! {
        code = &mut vmm.exit => {
            process::kill(fs.pid);
            let _ = (&mut fs.exit).await;
            code.unwrap_or(255)
        }
        code = &mut fs.exit => vmm_after_virtiofsd(vmm, fs.pid, code.unwrap_or(255), vmm_log).await,
    };
    if code > 128 {
        // A signal leaves eci-vmm no chance to say why it ended: say it for it.
        note_in_log(
            vmm_log,
            &format!("eci-vmm (pid {vmm_pid}) ended: {}", exit_text(code)),
        );
    }
    code
}

/// eci-vmm's status once virtiofsd ended first: its own exit when it comes within
/// [`VMM_EXIT_GRACE`], else the kill's, with a note of what it still held.
async fn vmm_after_virtiofsd(mut vmm: Watched, fs_pid: i32, fs_code: i32, vmm_log: &Path) -> i32 {
    if let Ok(code) = tokio::time::timeout(VMM_EXIT_GRACE, &mut vmm.exit).await {
        return code.unwrap_or(255);
    }
    let why = format!(
        "virtiofsd (pid {fs_pid}) exited: {}; eci-vmm still ran {} s later, holding {}; \
         ending the pod's VM",
        exit_text(fs_code),
        VMM_EXIT_GRACE.as_secs(),
        process::describe_fds(vmm.pid)
    );
    log::error!("{why}");
    note_in_log(vmm_log, &why);
    process::kill(vmm.pid);
    vmm.exit.await.unwrap_or(255)
}

/// Appends a line of the shim's to a log its child writes (best effort: a diagnostic).
fn note_in_log(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(file, "containerd-shim-eci-v2: {line}");
    }
}

/// An exit status as the shell reports it (128 + signal), said in words.
pub fn exit_text(code: i32) -> String {
    match code {
        159 => "killed by SIGSYS (a seccomp filter refused a system call)".into(),
        c if c > 128 => format!("killed by signal {}", c - 128),
        c => format!("exit status {c}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    use super::*;

    /// A `sleep` standing in for eci-vmm or virtiofsd, whose exit a thread reports the way
    /// the shim's reaper does; `on_its_own` makes it exit with 0 after that long.
    fn stand_in(on_its_own: Option<Duration>) -> (Watched, std::thread::JoinHandle<()>) {
        let secs = on_its_own.map_or(60.0, |d| d.as_secs_f64());
        let mut child: Child = Command::new("sleep").arg(secs.to_string()).spawn().unwrap();
        let pid = child.id() as i32;
        let (tx, exit) = oneshot::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait().unwrap();
            let _ = tx.send(status.code().unwrap_or(128 + status.signal().unwrap_or(0)));
        });
        (Watched { pid, exit }, waiter)
    }

    fn log_text(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("vmm.log")).unwrap()
    }

    #[tokio::test]
    async fn a_vmm_that_ends_soon_after_virtiofsd_is_left_to_say_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vmm.log"),
            "eci-vmm: guest stopped: reset\n",
        )
        .unwrap();
        let (vmm, vmm_waiter) = stand_in(Some(Duration::from_secs(2)));
        let (fs, fs_waiter) = stand_in(Some(Duration::from_millis(100)));
        let code = both_ended(vmm, fs, &dir.path().join("vmm.log")).await;
        assert_eq!(code, 0, "{}", log_text(&dir));
        assert_eq!(log_text(&dir), "eci-vmm: guest stopped: reset\n");
        vmm_waiter.join().unwrap();
        fs_waiter.join().unwrap();
    }

    #[tokio::test]
    async fn a_vmm_still_running_after_the_grace_is_ended_and_the_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmm.log"), "").unwrap();
        let (vmm, vmm_waiter) = stand_in(None);
        let vmm_pid = vmm.pid;
        let (fs, fs_waiter) = stand_in(Some(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let code = both_ended(vmm, fs, &dir.path().join("vmm.log")).await;
        assert_eq!(code, 137);
        assert!(started.elapsed() >= VMM_EXIT_GRACE);
        let log = log_text(&dir);
        assert!(
            log.contains("virtiofsd (pid ")
                && log.contains("exited: exit status 0; eci-vmm still ran 5 s later, holding "),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "eci-vmm (pid {vmm_pid}) ended: killed by signal 9"
            )),
            "{log}"
        );
        vmm_waiter.join().unwrap();
        fs_waiter.join().unwrap();
    }

    #[tokio::test]
    async fn virtiofsd_is_ended_with_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmm.log"), "").unwrap();
        let (vmm, vmm_waiter) = stand_in(Some(Duration::from_millis(100)));
        let (fs, fs_waiter) = stand_in(None);
        let started = std::time::Instant::now();
        let code = both_ended(vmm, fs, &dir.path().join("vmm.log")).await;
        assert_eq!(code, 0);
        // The stand-in for virtiofsd would have slept a minute: it was killed.
        assert!(started.elapsed() < Duration::from_secs(30));
        fs_waiter.join().unwrap();
        vmm_waiter.join().unwrap();
        assert_eq!(log_text(&dir), "");
    }
}
