//! The `start` action's handshake with containerd, in the form the calling daemon speaks.
//!
//! - containerd 2.3 and later send a protobuf `BootstrapParams` on stdin and read a protobuf
//!   `BootstrapResult` (address, protocol `ttrpc`, task API version 3) from stdout.
//! - containerd 1.7 to 2.2 pass flags and environment (`TTRPC_ADDRESS`, `MAX_SHIM_VERSION`),
//!   maybe the runtime options (a protobuf `Any`) on stdin, and read JSON `{"version",
//!   "address", "protocol"}`.
//! - containerd 1.6 passes the same flags without `MAX_SHIM_VERSION` and reads a plain address
//!   (it would take JSON for an address), which means task API v2.
//!
//! The shim library implements the first two in its own `run` but answers 1.6 in JSON, and its
//! parser is crate-private; this module keeps the library's types and its rules for telling
//! runtime options from bootstrap params apart.

use containerd_shim::{
    bootstrap::{BootstrapParams, BootstrapResult},
    protos::protobuf::{well_known_types::any::Any, Message},
    Flags, StartOpts,
};

/// Task API version of the bootstrap reply (`containerd.task.v3.Task`).
const BOOTSTRAP_TASK_VERSION: i32 = containerd_shim::protos::TASK_API_VERSION;
const PROTOCOL: &str = "ttrpc";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "bootstrap params are for {namespace}/{id}, the command line says {flag_namespace}/{flag_id}"
    )]
    Mismatch {
        namespace: String,
        id: String,
        flag_namespace: String,
        flag_id: String,
    },
    #[error("encode the start reply")]
    Encode(#[source] containerd_shim::protos::protobuf::Error),
}

/// How the reply to `start` must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// containerd 1.6: the address alone (task API v2).
    Plain,
    /// containerd 1.7 to 2.2: JSON with this task API version.
    Json { version: i32 },
    /// containerd 2.3+: protobuf `BootstrapResult` (task API v3).
    Bootstrap,
}

/// What containerd asked for at `start`.
#[derive(Debug)]
pub struct StartRequest {
    pub reply: Reply,
    /// Addresses, namespace and socket directory, from whichever protocol carried them.
    pub opts: StartOpts,
}

/// Decodes `start`'s input: `stdin` as containerd wrote it, `ttrpc_address` and
/// `max_shim_version` from the environment.
pub fn read_start(
    flags: &Flags,
    stdin: &[u8],
    ttrpc_address: Option<String>,
    max_shim_version: Option<&str>,
) -> Result<StartRequest, BootstrapError> {
    if let Some(params) = bootstrap_params(stdin, flags)? {
        return Ok(StartRequest {
            reply: Reply::Bootstrap,
            opts: params.into(),
        });
    }
    let reply = match max_shim_version.and_then(|v| v.trim().parse::<i32>().ok()) {
        None => Reply::Plain,
        Some(max) => Reply::Json {
            version: max.clamp(2, BOOTSTRAP_TASK_VERSION),
        },
    };
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: ttrpc_address.unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    Ok(StartRequest { reply, opts })
}

/// `stdin` as bootstrap params, or None when it is empty or legacy runtime options.
fn bootstrap_params(
    stdin: &[u8],
    flags: &Flags,
) -> Result<Option<BootstrapParams>, BootstrapError> {
    if stdin.is_empty() {
        return Ok(None);
    }
    let Ok(params) = BootstrapParams::parse_from_bytes(stdin) else {
        return Ok(None);
    };
    if params.instance_id == flags.id && params.namespace == flags.namespace {
        return Ok(Some(params));
    }
    // Runtime options (an `Any`) decode as params too: type URL as instance_id, value as
    // namespace, nothing else set.
    if Any::parse_from_bytes(stdin).is_ok_and(|any| {
        any.type_url == params.instance_id
            && params
                == BootstrapParams {
                    instance_id: params.instance_id.clone(),
                    namespace: params.namespace.clone(),
                    ..Default::default()
                }
    }) {
        return Ok(None);
    }
    Err(BootstrapError::Mismatch {
        namespace: params.namespace,
        id: params.instance_id,
        flag_namespace: flags.namespace.clone(),
        flag_id: flags.id.clone(),
    })
}

/// The bytes `start` prints for `address`.
pub fn encode_reply(reply: Reply, address: &str) -> Result<Vec<u8>, BootstrapError> {
    Ok(match reply {
        Reply::Plain => address.as_bytes().to_vec(),
        Reply::Json { version } => serde_json::json!({
            "version": version,
            "address": address,
            "protocol": PROTOCOL,
        })
        .to_string()
        .into_bytes(),
        Reply::Bootstrap => BootstrapResult {
            version: BOOTSTRAP_TASK_VERSION,
            address: address.to_owned(),
            protocol: PROTOCOL.to_owned(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(BootstrapError::Encode)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "pod".into(),
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            publish_binary: "/usr/bin/containerd".into(),
            ..Default::default()
        }
    }

    #[test]
    fn containerd_1_6_gets_a_plain_address() {
        let req = read_start(&flags(), b"", Some("/c.sock.ttrpc".into()), None).unwrap();
        assert_eq!(req.reply, Reply::Plain);
        assert_eq!(req.opts.ttrpc_address, "/c.sock.ttrpc");
        assert_eq!(req.opts.address, "/run/containerd/containerd.sock");
        assert_eq!(encode_reply(req.reply, "unix:///s").unwrap(), b"unix:///s");
    }

    #[test]
    fn runtime_options_on_stdin_are_not_bootstrap_params() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x0f/etc/eci/a.toml".to_vec(),
            ..Default::default()
        };
        let stdin = any.write_to_bytes().unwrap();
        let req = read_start(&flags(), &stdin, None, Some("2")).unwrap();
        assert_eq!(req.reply, Reply::Json { version: 2 });
    }

    #[test]
    fn legacy_json_names_version_address_and_protocol() {
        let req = read_start(&flags(), b"", None, Some("3")).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&encode_reply(req.reply, "unix:///s").unwrap()).unwrap();
        assert_eq!(json["version"], 3);
        assert_eq!(json["address"], "unix:///s");
        assert_eq!(json["protocol"], "ttrpc");
        // A version beyond what the shim serves is capped.
        let req = read_start(&flags(), b"", None, Some("9")).unwrap();
        assert_eq!(req.reply, Reply::Json { version: 3 });
    }

    #[test]
    fn bootstrap_params_get_a_bootstrap_result() {
        let params = BootstrapParams {
            instance_id: "pod".into(),
            namespace: "k8s.io".into(),
            containerd_ttrpc_address: "/x/c.sock.ttrpc".into(),
            containerd_grpc_address: "/x/c.sock".into(),
            socket_dir: Some("/x/s".into()),
            ..Default::default()
        };
        let req = read_start(
            &flags(),
            &params.write_to_bytes().unwrap(),
            Some("/ignored".into()),
            Some("2"),
        )
        .unwrap();
        assert_eq!(req.reply, Reply::Bootstrap);
        assert_eq!(req.opts.ttrpc_address, "/x/c.sock.ttrpc");
        assert!(req.opts.socket_address("pod").starts_with("unix:///x/s/"));
        let result =
            BootstrapResult::parse_from_bytes(&encode_reply(req.reply, "unix:///s").unwrap())
                .unwrap();
        assert_eq!(
            (
                result.version,
                result.address.as_str(),
                result.protocol.as_str()
            ),
            (3, "unix:///s", "ttrpc")
        );
    }

    #[test]
    fn bootstrap_params_for_another_container_are_refused() {
        let params = BootstrapParams {
            instance_id: "other".into(),
            namespace: "k8s.io".into(),
            containerd_ttrpc_address: "/x".into(),
            ..Default::default()
        };
        let err = read_start(&flags(), &params.write_to_bytes().unwrap(), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("k8s.io/other") && err.contains("k8s.io/pod"),
            "{err}"
        );
    }
}
