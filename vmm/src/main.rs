use anyhow::Context;
use clap::Parser;
use eci_vmm::config::{Cli, ConfigError};
use eci_vmm::vmm::{Vm, VmExit};

fn run() -> anyhow::Result<i32> {
    let mut cfg = Cli::parse().merge().context("configuration")?;
    if let Some(jail) = cfg.jail.as_mut() {
        if !cfg.vfio.is_empty() {
            // The devices as the host shows them, bound into the jail (see `jail_binds`).
            let binds = eci_vmm::vfio::jail_binds(&mut cfg.vfio)
                .map_err(|e| ConfigError::Invalid {
                    field: "vfio",
                    reason: e.to_string(),
                })
                .context("configuration")?;
            jail.binds.extend(binds);
        }
        eci_vmm::jail::enter(jail).context("entering the jail")?;
    }
    cfg.validate().context("configuration")?;
    let mut vm = Vm::new(cfg).context("creating the VM")?;
    vm.attach_configured_devices().context("creating devices")?;
    // `run` has said how the VM ended.
    Ok(match vm.run().context("running the VM")? {
        VmExit::GuestStopped(_) | VmExit::Requested => 0,
        VmExit::Failed(_) => 1,
    })
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("eci-vmm: error: {e:#}");
            std::process::exit(1);
        }
    }
}
