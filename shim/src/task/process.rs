//! One process of a container (its init or an exec) as the shim tracks it.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_shim::protos::{
    protobuf::{well_known_types::timestamp::Timestamp, MessageField},
    types::task::Status,
};
use tokio::sync::watch;

use crate::stdio::{ProcessIo, StdioPaths};

/// Exit status (128 + signal when killed) and time.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn timestamp(&self) -> MessageField<Timestamp> {
        MessageField::some(timestamp(self.at))
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

pub fn system_time(unix_nanos: i64) -> SystemTime {
    if unix_nanos <= 0 {
        return SystemTime::now();
    }
    UNIX_EPOCH + Duration::from_nanos(unix_nanos as u64)
}

pub struct Process {
    pub container_id: String,
    /// "" for the container's init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI process (JSON) of an exec.
    pub process_json: Vec<u8>,
    state: Mutex<(Status, u32)>,
    pub io: tokio::sync::Mutex<Option<ProcessIo>>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        process_json: Vec<u8>,
    ) -> Self {
        Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            stdio,
            process_json,
            state: Mutex::new((Status::CREATED, 0)),
            io: tokio::sync::Mutex::new(None),
            exit: watch::channel(None).0,
        }
    }

    /// The id containerd's events use: the exec id, or the container id for init.
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn status(&self) -> Status {
        self.state.lock().expect("process state lock").0
    }

    pub fn pid(&self) -> u32 {
        self.state.lock().expect("process state lock").1
    }

    pub fn set_pid(&self, pid: u32) {
        self.state.lock().expect("process state lock").1 = pid;
    }

    /// Moves to `status` unless the process already stopped.
    pub fn set_status(&self, status: Status) {
        let mut state = self.state.lock().expect("process state lock");
        if state.0 != Status::STOPPED {
            state.0 = status;
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the exit; returns false when it was already recorded.
    pub fn set_exited(&self, exit: Exit) -> bool {
        self.state.lock().expect("process state lock").0 = Status::STOPPED;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(exit);
            true
        })
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let exit = *rx
            .wait_for(|e| e.is_some())
            .await
            .expect("sender lives in self");
        exit.expect("waited for Some")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_is_recorded_once_and_wakes_waiters() {
        let p = std::sync::Arc::new(Process::new("c", "", StdioPaths::default(), Vec::new()));
        assert_eq!(p.status(), Status::CREATED);
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await.status }
        });
        p.set_status(Status::RUNNING);
        assert!(p.set_exited(Exit {
            status: 7,
            at: SystemTime::now()
        }));
        assert!(!p.set_exited(Exit {
            status: 137,
            at: SystemTime::now()
        }));
        assert_eq!(waiter.await.unwrap(), 7);
        p.set_status(Status::RUNNING);
        assert_eq!(p.status(), Status::STOPPED);
        assert_eq!(p.event_id(), "c");
    }

    #[test]
    fn timestamps_round_trip() {
        let at = system_time(1_700_000_000_123_456_789);
        let ts = timestamp(at);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }
}
