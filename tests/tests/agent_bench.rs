//! Benchmark, not a test (`make bench-agent`; ignored by `cargo test`): create + start + exit
//! (+ remove) latency of a busybox `true` container through the local-mode agent, against
//! `runc run` of the same bundle in the same run. Prints p50 and p99 of each and ends with
//! `ratio: X.XX` (agent p50 over runc p50). `BENCH_RUNS=N` changes the number of runs (100).

use eci_protocol::agent::*;
use eci_tests::agent::{default_spec, LocalAgent};
use eci_tests::rootfs::BusyboxBundle;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms over {} runs",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
    p50
}

#[tokio::test]
#[ignore = "benchmark: run with make bench-agent"]
async fn bench_agent_vs_runc() {
    if eci_tests::prereq::skip_unless_ready(eci_tests::agent::missing()) {
        return;
    }
    let Ok(runc) = which("runc") else {
        eci_tests::prereq::missing_prerequisite("runc (apt-get install runc)");
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let bundle = BusyboxBundle::new().unwrap();
    let spec = default_spec(&["true"]);
    spec.save(bundle.bundle().join("config.json")).unwrap();
    let agent = LocalAgent::start().await.unwrap();
    let tag = std::process::id();

    let mut agent_samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let id = format!("bench-agent-{tag}-{i}");
        let t = Instant::now();
        let create = CreateContainerRequest {
            container_id: id.clone(),
            oci_spec_json: serde_json::to_vec(&spec).unwrap(),
            bundle: bundle.bundle().display().to_string(),
            ..Default::default()
        };
        agent.client.create_container(ctx(), &create).await.unwrap();
        let start = StartContainerRequest {
            container_id: id.clone(),
            ..Default::default()
        };
        agent.client.start_container(ctx(), &start).await.unwrap();
        let wait = ProcessRequest {
            container_id: id.clone(),
            ..Default::default()
        };
        let exit = agent.client.wait_process(ctx(), &wait).await.unwrap();
        let remove = RemoveContainerRequest {
            container_id: id,
            ..Default::default()
        };
        agent.client.remove_container(ctx(), &remove).await.unwrap();
        agent_samples.push(t.elapsed());
        assert_eq!(exit.exit_code, 0);
    }

    let runc_root = tempfile::tempdir().unwrap();
    let mut runc_samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let id = format!("bench-runc-{tag}-{i}");
        let t = Instant::now();
        // `runc run` creates, starts, waits and deletes: the same work as the agent's loop.
        let status = Command::new(&runc)
            .arg("--root")
            .arg(runc_root.path())
            .args(["run", "--bundle"])
            .arg(bundle.bundle())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        runc_samples.push(t.elapsed());
        assert!(status.success(), "runc run failed: {status}");
    }

    println!("create+start+exit+remove of busybox `true`, sequential:");
    let a = report("eci-agent (local mode)", agent_samples);
    let r = report("runc run", runc_samples);
    println!("ratio: {:.2}", a.as_secs_f64() / r.as_secs_f64());
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
