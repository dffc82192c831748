//! Round trips through a network namespace of the test thread's own (root needed): links made
//! with `ip` (a child forked from the thread shares its namespace), then every request.

use super::*;
use std::process::Command;

/// Runs `f` on a thread of its own in a fresh network namespace.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "these tests need root (network namespaces)"
    );
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag; it changes only this thread's network namespace, and the
        // thread ends with the test.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .expect("test thread")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tc_show(args: &[&str]) -> String {
    let out = Command::new("tc").args(args).output().expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn links_addresses_routes_and_neighbours_round_trip() {
    in_fresh_netns(|| {
        // veth rather than dummy: some kernels build no dummy driver.
        ip(&[
            "link", "add", "d0", "type", "veth", "peer", "name", "d0peer",
        ]);
        let mut nl = Netlink::new().unwrap();
        let d0 = nl.link_by_name("d0").unwrap().expect("d0 listed");
        assert_eq!(d0.kind.as_deref(), Some("veth"));
        assert!(!d0.up);
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        assert!(lo.loopback);

        let mac = [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05];
        nl.set_link(
            d0.index,
            &LinkChange {
                name: Some("eth7".into()),
                mac: Some(mac),
                mtu: Some(1400),
                up: None,
            },
        )
        .unwrap();
        nl.set_link(
            d0.index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        let eth7 = nl.link_by_name("eth7").unwrap().expect("renamed");
        assert_eq!(
            (eth7.index, eth7.mac, eth7.mtu, eth7.up),
            (d0.index, Some(mac), 1400, true)
        );

        let v4: IpAddr = "10.88.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        nl.add_address(eth7.index, v4, 16).unwrap();
        nl.add_address(eth7.index, v6, 64).unwrap();
        let again = nl.add_address(eth7.index, v4, 16).unwrap_err();
        assert_eq!(again.errno(), Some(libc::EEXIST));
        assert!(again.to_string().contains("10.88.0.5/16"), "{again}");
        let addresses = nl.addresses().unwrap();
        for (ip, prefix) in [(v4, 16), (v6, 64)] {
            assert!(
                addresses
                    .iter()
                    .any(|a| a.index == eth7.index && a.ip == ip && a.prefix == prefix && a.global),
                "{ip}/{prefix} in {addresses:?}"
            );
        }

        let gateway: IpAddr = "10.88.0.1".parse().unwrap();
        nl.add_route(&NewRoute {
            destination: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            gateway: Some(gateway),
            source: None,
            index: eth7.index,
            metric: 0,
        })
        .unwrap();
        nl.add_route(&NewRoute {
            destination: "192.0.2.0".parse().unwrap(),
            prefix: 24,
            gateway: None,
            source: Some(v4),
            index: eth7.index,
            metric: 7,
        })
        .unwrap();
        let routes = nl.routes().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.prefix == 0 && r.gateway == Some(gateway) && !r.kernel),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.prefix == 24
                && r.source == Some(v4)
                && r.metric == 7
                && r.index == Some(eth7.index)),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| r.prefix == 16 && r.kernel),
            "the address's own subnet: {routes:?}"
        );

        let peer = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        nl.add_neighbour(eth7.index, gateway, peer).unwrap();
        let neighbours = nl.neighbours().unwrap();
        assert!(
            neighbours
                .iter()
                .any(|n| n.ip == gateway && n.mac == Some(peer) && n.permanent),
            "{neighbours:?}"
        );
    });
}

#[test]
fn ingress_redirects_are_added_and_removed() {
    in_fresh_netns(|| {
        ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        let mut nl = Netlink::new().unwrap();
        let v0 = nl.link_by_name("v0").unwrap().unwrap().index;
        let v1 = nl.link_by_name("v1").unwrap().unwrap().index;
        let filters = || tc_show(&["filter", "show", "dev", "v0", "ingress"]);
        assert!(filters().is_empty(), "{}", filters());
        nl.add_ingress_qdisc(v0).unwrap();
        nl.redirect_ingress(v0, v1).unwrap();
        let shown = tc_show(&["filter", "show", "dev", "v0", "ingress"]);
        assert!(
            shown.contains("mirred") && shown.contains("Redirect to device v1"),
            "tc sees the redirect: {shown}"
        );
        nl.remove_ingress_qdisc(v0).unwrap();
        assert!(!filters().contains("mirred"), "{}", filters());
        assert!(!tc_show(&["qdisc", "show", "dev", "v0"]).contains("ingress"));
        // Removing what is gone is no error (teardown runs again after crashes).
        nl.remove_ingress_qdisc(v0).unwrap();
    });
}
