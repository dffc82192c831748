//! Passed-through PCI devices (SetupSandbox) and the guest device nodes a container gets
//! (CreateContainer). Both name guest files the agent writes or opens, so both are checked
//! strictly: PCI addresses in their canonical form, device paths under /dev.

use super::{Result, ValidationError};
use crate::agent::{ContainerDevice, PciDevice};

/// Guest drivers the agent binds passed-through devices to ("" leaves the guest's own).
pub const PCI_DRIVERS: &[&str] = &["", "vfio-pci"];
/// Prefix of a [`ContainerDevice`] source naming a device's VFIO group.
pub const VFIO_SOURCE_PREFIX: &str = "vfio:";
/// Most devices one request may carry.
pub const MAX_DEVICES: usize = 64;

/// A PCI address in sysfs form: `DDDD:BB:DD.F`, lower-case hex, device below 32, function
/// below 8.
pub fn pci_address(field: &str, value: &str) -> Result {
    let bad = || {
        ValidationError::new(
            field,
            format!("`{value}` is not a PCI address (DDDD:BB:DD.F, lower-case hex)"),
        )
    };
    let (rest, function) = value.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    let ok = parts.len() == 3
        && hex(parts[0], 4)
        && hex(parts[1], 2)
        && hex(parts[2], 2)
        && u8::from_str_radix(parts[2], 16).is_ok_and(|d| d < 32)
        && function.len() == 1
        && ('0'..='7').contains(&function.chars().next().unwrap_or('x'));
    ok.then_some(()).ok_or_else(bad)
}

/// The passed-through devices of SetupSandbox.
pub fn pci_devices(field: &str, devices: &[PciDevice]) -> Result {
    if devices.len() > MAX_DEVICES {
        return Err(ValidationError::new(
            field,
            format!("more than {MAX_DEVICES} devices"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        pci_address(&f("guest_address"), &d.guest_address)?;
        if !seen.insert(d.guest_address.as_str()) {
            return Err(ValidationError::new(
                f("guest_address"),
                format!("{} is listed twice", d.guest_address),
            ));
        }
        if d.host_address.len() > 64 {
            return Err(ValidationError::new(
                f("host_address"),
                "longer than 64 bytes",
            ));
        }
        if !PCI_DRIVERS.contains(&d.driver.as_str()) {
            return Err(ValidationError::new(
                f("driver"),
                format!("`{}` is not \"vfio-pci\" or empty", d.driver),
            ));
        }
    }
    Ok(())
}

/// The device nodes of CreateContainer: `vfio:<guest address>` or a normalised path under
/// /dev whose last component may end in `*`.
pub fn container_devices(field: &str, devices: &[ContainerDevice]) -> Result {
    if devices.len() > MAX_DEVICES {
        return Err(ValidationError::new(
            field,
            format!("more than {MAX_DEVICES} devices"),
        ));
    }
    for (i, d) in devices.iter().enumerate() {
        let f = format!("{field}[{i}].source");
        if let Some(address) = d.source.strip_prefix(VFIO_SOURCE_PREFIX) {
            pci_address(&f, address)?;
            continue;
        }
        super::absolute_path(&f, &d.source)?;
        let Some(name) = d.source.strip_prefix("/dev/") else {
            return Err(ValidationError::new(f, "must be a path under /dev"));
        };
        if name.contains('*') && (!name.ends_with('*') || name[..name.len() - 1].contains('*')) {
            return Err(ValidationError::new(
                f,
                "`*` may only end the last component",
            ));
        }
        if name.split('/').any(|c| c == "*") {
            return Err(ValidationError::new(
                f,
                "`*` must follow a name prefix (e.g. /dev/nvidia*)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        pci_address("a", "0000:00:01.0").unwrap();
        pci_address("a", "0000:3b:1f.7").unwrap();
        for bad in [
            "00:01.0",
            "0000:00:20.0",
            "0000:00:01.8",
            "0000:00:0G.0",
            "0000:3B:00.0",
            "0000:00:01.0/../x",
            "",
        ] {
            let e = pci_address("pci_devices[0].guest_address", bad).unwrap_err();
            assert_eq!(e.field, "pci_devices[0].guest_address", "{bad}");
        }
    }

    fn pci(guest: &str, driver: &str) -> PciDevice {
        PciDevice {
            guest_address: guest.into(),
            host_address: "0000:3b:00.0".into(),
            driver: driver.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pci_device_refusals_name_the_field() {
        pci_devices(
            "pci_devices",
            &[pci("0000:00:01.0", "vfio-pci"), pci("0000:00:02.0", "")],
        )
        .unwrap();
        let e = pci_devices("pci_devices", &[pci("0000:00:01.0", "nvidia")]).unwrap_err();
        assert_eq!(e.field, "pci_devices[0].driver");
        let e = pci_devices(
            "pci_devices",
            &[pci("0000:00:01.0", ""), pci("0000:00:01.0", "")],
        )
        .unwrap_err();
        assert_eq!(e.field, "pci_devices[1].guest_address");
    }

    fn dev(source: &str) -> ContainerDevice {
        ContainerDevice {
            source: source.into(),
            ..Default::default()
        }
    }

    #[test]
    fn container_device_sources() {
        container_devices(
            "devices",
            &[
                dev("vfio:0000:00:01.0"),
                dev("/dev/nvidiactl"),
                dev("/dev/nvidia*"),
                dev("/dev/dri/card*"),
            ],
        )
        .unwrap();
        for bad in [
            "vfio:1",
            "/etc/passwd",
            "/dev/../etc/passwd",
            "dev/null",
            "/dev/*",
            "/dev/a*b",
            "/dev/a*/b",
            "/dev/dri/*",
        ] {
            let e = container_devices("devices", &[dev("/dev/null"), dev(bad)]).unwrap_err();
            assert_eq!(e.field, "devices[1].source", "{bad}");
        }
    }
}
