//! A test double of the runtime: records every Backend call and keeps the store up to date the
//! way the runtime's contract says (create stores the group, delete removes it), so that the HTTP
//! layer can be tested without containerd. What users rely on end to end is tested through the
//! real runtime in tests/tests/eci_e2e.rs.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use eci::backend::{Backend, BackendError, LogStream};
use eci::model::{
    ContainerGroupSpec, ExecRequest, ExecResponse, GroupMetrics, GroupStatus, ImageCacheSpec,
    LogOptions, UpdateImageCacheRequest, ValidatedUpdate,
};
use eci::server::{router, AppState};
use eci::store::Store;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Create(ContainerGroupSpec),
    Delete(String),
    Restart(String),
    Update(String, ValidatedUpdate),
    Exec(String, String, ExecRequest),
    Logs(String, String, LogOptions),
    Metrics(String),
    CreateCache(ImageCacheSpec),
    UpdateCache(String, UpdateImageCacheRequest),
    DeleteCache(String),
}

pub struct Recorder {
    pub store: Store,
    pub calls: Mutex<Vec<Call>>,
    /// When set, the next call fails with this error.
    pub fail_next: Mutex<Option<BackendError>>,
    /// The node's GPUs, taken as the real runtime takes them.
    pub gpu_pool: Vec<String>,
}

impl Recorder {
    fn record(&self, call: Call) -> Result<(), BackendError> {
        self.calls.lock().unwrap().push(call);
        match self.fail_next.lock().unwrap().take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for Recorder {
    async fn create_group(&self, spec: ContainerGroupSpec) -> Result<String, BackendError> {
        self.record(Call::Create(spec.clone()))?;
        let id = self.store.insert_group(&spec, GroupStatus::Pending)?;
        let mut spec = spec;
        eci::backend::take_gpus(&self.store, &id, &mut spec, &self.gpu_pool)?;
        Ok(id)
    }
    async fn delete_group(&self, id: &str) -> Result<(), BackendError> {
        self.record(Call::Delete(id.into()))?;
        self.store.delete_group(id)?;
        Ok(())
    }
    async fn restart_group(&self, id: &str) -> Result<(), BackendError> {
        self.record(Call::Restart(id.into()))?;
        self.store.set_group_status(id, GroupStatus::Restarting)?;
        Ok(())
    }
    async fn update_group(&self, id: &str, update: ValidatedUpdate) -> Result<(), BackendError> {
        self.record(Call::Update(id.into(), update.clone()))?;
        self.store.set_group_status(id, GroupStatus::Updating)?;
        self.store.set_group_spec(id, &update.spec)?;
        Ok(())
    }
    async fn exec(
        &self,
        id: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecResponse, BackendError> {
        self.record(Call::Exec(id.into(), container.into(), request.clone()))?;
        Ok(if request.sync {
            ExecResponse::Completed {
                stdout: format!("ran {}\n", request.command.join(" ")),
                stderr: String::new(),
                exit_code: 3,
            }
        } else {
            ExecResponse::Stream {
                web_socket_uri: "http://127.0.0.1:1/exec/abc".into(),
            }
        })
    }
    async fn logs(
        &self,
        id: &str,
        container: &str,
        options: LogOptions,
    ) -> Result<LogStream, BackendError> {
        self.record(Call::Logs(id.into(), container.into(), options))?;
        let chunks: Vec<Result<Bytes, BackendError>> =
            vec![Ok(Bytes::from("line 1\n")), Ok(Bytes::from("line 2\n"))];
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
    async fn metrics(&self, id: &str) -> Result<GroupMetrics, BackendError> {
        self.record(Call::Metrics(id.into()))?;
        Ok(GroupMetrics::default())
    }
    async fn create_image_cache(&self, spec: ImageCacheSpec) -> Result<String, BackendError> {
        self.record(Call::CreateCache(spec.clone()))?;
        Ok(self.store.insert_image_cache(&spec)?)
    }
    async fn update_image_cache(
        &self,
        id: &str,
        patch: UpdateImageCacheRequest,
    ) -> Result<(), BackendError> {
        self.record(Call::UpdateCache(id.into(), patch.clone()))?;
        self.store
            .update_image_cache(id, patch.name.as_deref(), patch.retention_days)?;
        Ok(())
    }
    async fn delete_image_cache(&self, id: &str) -> Result<(), BackendError> {
        self.record(Call::DeleteCache(id.into()))?;
        self.store.delete_image_cache(id)?;
        Ok(())
    }
}

/// A router over a fresh store in a temp dir and a recording backend.
pub struct Harness {
    pub app: axum::Router,
    pub backend: Arc<Recorder>,
    pub store: Store,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new(vcpu_quota: f64) -> Self {
        Self::with_gpus(vcpu_quota, &[])
    }

    /// With a node GPU pool of these PCI addresses.
    pub fn with_gpus(vcpu_quota: f64, pool: &[&str]) -> Self {
        let gpu_pool: Vec<String> = pool.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let backend = Arc::new(Recorder {
            store: store.clone(),
            calls: Mutex::new(Vec::new()),
            fail_next: Mutex::new(None),
            gpu_pool: gpu_pool.clone(),
        });
        let state = AppState::new(store.clone(), backend.clone(), vcpu_quota)
            .with_gpu_quota(gpu_pool.len() as u32);
        Harness {
            app: router(state),
            backend,
            store,
            _dir: dir,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.backend.calls.lock().unwrap().clone()
    }

    pub fn fail_next(&self, err: BackendError) {
        *self.backend.fail_next.lock().unwrap() = Some(err);
    }

    /// Sends a request; returns the status and the body (JSON when it parses, else a string).
    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        self.request(Method::GET, uri, None).await
    }

    pub async fn post(
        &self,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.send_json(Method::POST, uri, body).await
    }

    pub async fn patch(
        &self,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.send_json(Method::PATCH, uri, body).await
    }

    async fn send_json(
        &self,
        method: Method,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.request(method, uri, Some(&body.to_string())).await
    }

    /// Creates a group and returns its id.
    pub async fn create(&self, body: serde_json::Value) -> String {
        let (status, answer) = self.post("/v1/containerGroups", body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["id"].as_str().unwrap().to_string()
    }
}

pub fn group(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "containers": [{"name": "app", "image": "busybox", "cpu": 1, "memory": 2}],
    })
}
