//! `make bench-api`: create-to-Running latency of a one-container group through `eci serve`,
//! against the same pod made straight through CRI (RunPodSandbox + CreateContainer +
//! StartContainer with the same runtime handler, CNI network and image), p50 over BENCH_RUNS
//! (20) runs after one warm-up each. Prints a table and ends with `ratio: X.XX` (eci / CRI).
//! Ignored by default: run with `--ignored --nocapture` (scripts/bench-api.sh does, release).

mod eci_common;

use std::time::{Duration, Instant};

use eci_common::*;
use eci_tests::{
    cni::ECI_HANDLER,
    cri::{self, Cri},
    images,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// One create through the API, timed until the group and its container report Running; then
/// deleted (not timed).
fn eci_once(env: &Env, n: usize) -> Duration {
    let body = simple_group(&format!("bench-{n}"), "Always", "exec sleep 3600");
    let start = Instant::now();
    let id = env.create(&body);
    loop {
        let group = env.group(&id);
        if group["status"] == "Running" && container(&group, "main")["state"] == "Running" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "group {id} not Running: {group:#}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    env.delete(&id);
    elapsed
}

/// The same pod straight through CRI: sandbox (with CNI), container, start; then removed (not
/// timed).
async fn cri_once(cri: &mut Cri, logs: &std::path::Path, n: usize) -> Duration {
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("cri-bench-{n}"),
            uid: format!("cri-bench-{}-{n}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let start = Instant::now();
    let pod = cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: ECI_HANDLER.into(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let container = cri
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: images::BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), "exec sleep 3600".into()],
                log_path: format!("main-{n}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(StartContainerRequest {
            container_id: container,
        })
        .await
        .expect("StartContainer");
    let elapsed = start.elapsed();
    cri.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    cri.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!(
        "| {name:<32} | {:>4} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} |",
        samples.len(),
        ms(samples[0]),
        ms(p50),
        ms(percentile(&samples, 0.9)),
        ms(samples[samples.len() - 1]),
    );
    p50
}

#[test]
#[ignore = "benchmark: make bench-api"]
fn bench_api_create_to_running() {
    let Some(env) = Env::start(EnvOptions::default()) else {
        return;
    };
    let runs = runs();
    // Alternate the two paths so that drift of the machine's load hits both alike.
    let logs = env.tmp.path().join("cri-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let socket = env.net.socket().to_path_buf();
    let mut eci_samples = Vec::new();
    let mut cri_samples = Vec::new();
    for n in 0..=runs {
        let eci = eci_once(&env, n);
        let (socket, logs) = (socket.clone(), logs.clone());
        let direct = cri::block_on(async move {
            let mut cri = Cri::connect(socket).await.expect("connect CRI");
            cri_once(&mut cri, &logs, n).await
        });
        // Run 0 is the warm-up of each path.
        if n > 0 {
            eci_samples.push(eci);
            cri_samples.push(direct);
        }
    }
    println!("\ncreate-to-Running of a one-container group (busybox, handler {ECI_HANDLER}, local mode, CNI bridge), ms");
    println!(
        "| {:<32} | {:>4} | {:>8} | {:>8} | {:>8} | {:>8} |",
        "path", "runs", "min", "p50", "p90", "max"
    );
    println!("|{}|", "-".repeat(83));
    let eci_p50 = row("eci serve (POST -> Running)", eci_samples);
    let cri_p50 = row("CRI (RunPodSandbox+Create+Start)", cri_samples);
    env.assert_containerd_empty();
    println!(
        "ratio: {:.2}",
        eci_p50.as_secs_f64() / cri_p50.as_secs_f64()
    );
}
