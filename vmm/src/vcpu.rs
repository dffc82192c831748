//! The vCPU as a state machine driven by messages: Running <-> Paused, and Exited. Each vCPU
//! runs on its own thread; the VMM kicks it out of KVM_RUN with a signal that sets
//! `immediate_exit`, so a message is never missed even when it races with entry into the guest.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::bus::Bus;

/// Messages from the VMM to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuMessage {
    Pause,
    Resume,
    Exit,
}

/// Why a vCPU stopped running the guest for good, or what it reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    Paused(u8),
    Resumed(u8),
    /// The guest asked for a reset or power-off (triple fault, PSCI-like system event).
    GuestStopped {
        id: u8,
        reason: String,
    },
    /// KVM or the guest failed in a way the VMM cannot continue from.
    Failed {
        id: u8,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Exited,
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|c| c.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's kvm_run mapping, valid for the vCPU's life;
        // set before the handler can run on this thread and cleared before the unmap.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (process wide, once).
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The channels between a vCPU thread and the VMM.
pub struct VcpuLinks {
    pub messages: Receiver<VcpuMessage>,
    pub events: Sender<VcpuEvent>,
    pub notify: vmm_sys_util::eventfd::EventFd,
    pub paused_count: Arc<AtomicUsize>,
}

pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    messages: Receiver<VcpuMessage>,
    events: Sender<VcpuEvent>,
    /// Tells the VMM's event loop that `events` has something.
    notify: vmm_sys_util::eventfd::EventFd,
    /// How many vCPUs are paused on request; the control socket waits on it.
    paused_count: Arc<AtomicUsize>,
    /// Seccomp filter this thread installs on itself before running the guest.
    filter: Option<seccompiler::BpfProgram>,
}

impl Vcpu {
    pub fn new(id: u8, fd: VcpuFd, pio: Arc<Bus>, mmio: Arc<Bus>, links: VcpuLinks) -> Self {
        Vcpu {
            id,
            fd,
            pio,
            mmio,
            messages: links.messages,
            events: links.events,
            notify: links.notify,
            paused_count: links.paused_count,
            filter: None,
        }
    }

    /// Something that reports a failure of this vCPU after `run` has consumed it (used when a
    /// device model panics on the vCPU thread: the VM then ends with an error, never hangs).
    pub fn failure_reporter(&self) -> std::io::Result<impl FnOnce(String) + Send + 'static> {
        let (id, events, notify) = (self.id, self.events.clone(), self.notify.try_clone()?);
        Ok(move |reason: String| {
            let _ = events.send(VcpuEvent::Failed { id, reason });
            let _ = notify.write(1);
        })
    }

    /// Installs `filter` on the vCPU thread when it starts.
    pub fn set_seccomp_filter(&mut self, filter: seccompiler::BpfProgram) {
        self.filter = Some(filter);
    }

    fn report(&self, e: VcpuEvent) {
        let _ = self.events.send(e);
        let _ = self.notify.write(1);
    }

    /// Runs until told to exit or the guest stops. Starts paused or running per `start`.
    pub fn run(mut self, start_running: bool) {
        if let Some(f) = self.filter.take() {
            if let Err(e) = seccompiler::apply_filter(&f) {
                self.report(VcpuEvent::Failed {
                    id: self.id,
                    reason: format!("installing the seccomp filter failed: {e}"),
                });
                return;
            }
        }
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        let mut state = if start_running {
            State::Running
        } else {
            State::Paused
        };
        while state != State::Exited {
            state = match state {
                State::Paused => match self.messages.recv() {
                    Ok(m) => self.apply(m, state),
                    Err(_) => State::Exited,
                },
                State::Running => match self.messages.try_recv() {
                    Ok(m) => self.apply(m, state),
                    Err(TryRecvError::Disconnected) => State::Exited,
                    Err(TryRecvError::Empty) => self.run_once(),
                },
                State::Exited => State::Exited,
            };
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    fn apply(&mut self, m: VcpuMessage, state: State) -> State {
        match (m, state) {
            (VcpuMessage::Exit, _) => State::Exited,
            (VcpuMessage::Pause, State::Running) => {
                self.paused_count.fetch_add(1, Ordering::SeqCst);
                self.report(VcpuEvent::Paused(self.id));
                State::Paused
            }
            (VcpuMessage::Resume, State::Paused) => {
                self.paused_count.fetch_sub(1, Ordering::SeqCst);
                self.report(VcpuEvent::Resumed(self.id));
                State::Running
            }
            (_, s) => s,
        }
    }

    /// `at rip 0x... (cs 0x.., cr0 .., cr3 .., cr4 .., efer ..)`: where the vCPU stopped.
    fn cpu_state(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            // KVM on AMD SVM puts the vCPU in its INIT state before it reports the shutdown
            // (the VMCB is undefined after one): the place is lost there.
            (Ok(r), Ok(s)) if (s.cs.selector, r.rip) == (0xf000, 0xfff0) => {
                "(where it stood is lost: KVM reset the vCPU, as it does on AMD SVM)".into()
            }
            (Ok(r), Ok(s)) => format!(
                "at rip {:#x} (cs {:#x}, rsp {:#x}, cr0 {:#x}, cr2 {:#x}, cr3 {:#x}, cr4 {:#x}, efer {:#x})",
                r.rip, s.cs.selector, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            ),
            (Err(e), _) | (_, Err(e)) => format!("(registers unreadable: {e})"),
        }
    }

    fn run_once(&mut self) -> State {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(port as u64, data);
                    State::Running
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(port as u64, data);
                    State::Running
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                    State::Running
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                    State::Running
                }
                VcpuExit::Hlt => {
                    self.report(VcpuEvent::GuestStopped {
                        id,
                        reason: "halted".into(),
                    });
                    State::Paused
                }
                VcpuExit::Shutdown => {
                    // Where it stood tells a guest bug (or an emulation's) from a reset asked
                    // for on purpose, which Linux does by triple fault with `reboot=t`.
                    let reason = format!("shutdown (triple fault or reset) {}", self.cpu_state());
                    self.report(VcpuEvent::GuestStopped { id, reason });
                    State::Paused
                }
                VcpuExit::SystemEvent(kind, _) => {
                    self.report(VcpuEvent::GuestStopped {
                        id,
                        reason: format!("system event {kind}"),
                    });
                    State::Paused
                }
                other => {
                    let reason = format!("unexpected KVM exit: {other:?}");
                    self.report(VcpuEvent::Failed { id, reason });
                    State::Paused
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                State::Running
            }
            Err(e) => {
                self.report(VcpuEvent::Failed {
                    id,
                    reason: format!("KVM_RUN failed: {e}"),
                });
                State::Paused
            }
        }
    }
}
