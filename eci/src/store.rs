//! Persistent state in one SQLite database (`<data dir>/eci.db`, WAL): container groups with
//! their normalised spec, container statuses (with CRI ids for reconciling after a restart),
//! events, and image caches with their events.
//!
//! `Store` is cheap to clone (one connection behind a mutex). Calls block for the few
//! microseconds-to-milliseconds a local SQLite statement takes; callers on the async runtime use
//! it directly, as the statements never wait on the network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::model::{
    ContainerGroup, ContainerGroupSpec, ContainerState, ContainerStatus, Event, EventType,
    GroupStatus, ImageCache, ImageCacheSpec, ImageCacheStatus, Tag,
};

/// Schema version written by this code; older databases are migrated on open.
/// 2: GPU allocations (`gpus`).
pub const SCHEMA_VERSION: i64 = 2;
/// Events kept per image cache (the manual's limit).
pub const MAX_IMAGE_CACHE_EVENTS: usize = 50;
/// Events kept per group; older ones are dropped so the table cannot grow without bound.
pub const MAX_GROUP_EVENTS: usize = 500;
/// File name of the database inside the data dir.
pub const DB_FILE: &str = "eci.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON")]
    Json(#[from] serde_json::Error),
    #[error("database schema version {found} is newer than this eci ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Not enough of a pooled resource (GPUs) is free.
    #[error("{0}")]
    Exhausted(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored group as the runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: String,
    pub spec: ContainerGroupSpec,
    pub status: GroupStatus,
    pub ip: Option<String>,
    /// CRI pod sandbox id once the sandbox exists.
    pub sandbox_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored container (app or init) of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub init: bool,
    /// CRI container id of the current instance, if one exists.
    pub cri_container_id: Option<String>,
    pub status: ContainerStatus,
}

/// Filter of [`Store::list_groups`]; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFilter {
    pub name: Option<String>,
    pub status: Option<GroupStatus>,
    /// (key, value); value `None` matches any value of the key.
    pub tag: Option<(String, Option<String>)>,
}

/// A stored image cache, with credentials, as the runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCacheRecord {
    pub id: String,
    pub spec: ImageCacheSpec,
    /// Stored status, with Ready past `expire_at` reported as Expired.
    pub status: ImageCacheStatus,
    pub created_at: DateTime<Utc>,
    pub expire_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| StoreError::Corrupt(format!("time {text:?}: {err}")))
}

fn parse_status(text: &str) -> Result<GroupStatus> {
    text.parse().map_err(StoreError::Corrupt)
}

/// A new id: prefix plus 16 hex digits of a random UUID.
fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &hex[..16])
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    cpu REAL NOT NULL,
    status TEXT NOT NULL,
    ip TEXT,
    sandbox_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    init INTEGER NOT NULL,
    position INTEGER NOT NULL,
    cri_id TEXT,
    status TEXT NOT NULL,
    PRIMARY KEY (group_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_owner ON events(owner, seq);
CREATE TABLE IF NOT EXISTS gpus (
    bdf TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS image_caches (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expire_at TEXT NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) `<data_dir>/eci.db`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(data_dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::init(conn)
    }

    /// A database in memory: for tests of code that needs a store but not persistence.
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);",
        )?;
        let found: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |row| {
                row.get(0)
            })
            .optional()?
            .flatten();
        match found {
            Some(version) if version > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    found: version,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(version) if version == SCHEMA_VERSION => {}
            _ => {
                conn.execute_batch(SCHEMA)?;
                conn.execute("DELETE FROM schema_version", [])?;
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are
        // atomic), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- groups -------------------------------------------------------------------------

    /// Stores a new group with the given status and every container Waiting; returns its id.
    pub fn insert_group(&self, spec: &ContainerGroupSpec, status: GroupStatus) -> Result<String> {
        let id = new_id("eci");
        let now = time_text(now());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO groups (id, name, spec, cpu, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                id,
                spec.name,
                serde_json::to_string(spec)?,
                spec.cpu,
                status.as_str(),
                now
            ],
        )?;
        sync_container_rows(&tx, &id, spec)?;
        tx.commit()?;
        Ok(id)
    }

    pub fn group(&self, id: &str) -> Result<Option<GroupRecord>> {
        let conn = self.lock();
        conn.query_row(
            "SELECT id, spec, status, ip, sandbox_id, created_at, updated_at FROM groups
             WHERE id = ?1",
            [id],
            raw_group,
        )
        .optional()?
        .map(RawGroup::into_record)
        .transpose()
    }

    /// Every stored group, oldest first (for reconciling after a restart).
    pub fn group_records(&self) -> Result<Vec<GroupRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, spec, status, ip, sandbox_id, created_at, updated_at FROM groups
             ORDER BY created_at, id",
        )?;
        let raws = stmt
            .query_map([], raw_group)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter().map(RawGroup::into_record).collect()
    }

    /// The API view of a group: record plus container statuses, passwords blanked.
    pub fn get_group(&self, id: &str) -> Result<Option<ContainerGroup>> {
        let Some(record) = self.group(id)? else {
            return Ok(None);
        };
        let containers = self.containers(id)?;
        Ok(Some(api_group(record, containers)))
    }

    /// Groups matching `filter`, oldest first.
    pub fn list_groups(&self, filter: &GroupFilter) -> Result<Vec<ContainerGroup>> {
        let mut groups = Vec::new();
        for record in self.group_records()? {
            if !matches_filter(&record, filter) {
                continue;
            }
            let containers = self.containers(&record.id)?;
            groups.push(api_group(record, containers));
        }
        Ok(groups)
    }

    /// Sets the status; returns false when the group does not exist.
    pub fn set_group_status(&self, id: &str, status: GroupStatus) -> Result<bool> {
        let changed = self.lock().execute(
            "UPDATE groups SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, status.as_str(), time_text(now())],
        )?;
        Ok(changed > 0)
    }

    /// Records the CRI sandbox id and the pod IP (either may be cleared with `None`).
    pub fn set_group_sandbox(
        &self,
        id: &str,
        sandbox_id: Option<&str>,
        ip: Option<&str>,
    ) -> Result<bool> {
        let changed = self.lock().execute(
            "UPDATE groups SET sandbox_id = ?2, ip = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, sandbox_id, ip, time_text(now())],
        )?;
        Ok(changed > 0)
    }

    /// Replaces the spec (after an update): containers new to the spec get Waiting rows, rows
    /// of containers no longer in it are removed, images in statuses follow the spec.
    pub fn set_group_spec(&self, id: &str, spec: &ContainerGroupSpec) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE groups SET spec = ?2, cpu = ?3, name = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                id,
                serde_json::to_string(spec)?,
                spec.cpu,
                spec.name,
                time_text(now())
            ],
        )?;
        if changed > 0 {
            sync_container_rows(&tx, id, spec)?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    /// Deletes the group, its containers and events; returns false when it did not exist.
    pub fn delete_group(&self, id: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM events WHERE owner = ?1", [id])?;
        let changed = tx.execute("DELETE FROM groups WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(changed > 0)
    }

    /// Sum of the normalised cpu of groups not in a terminal state.
    pub fn vcpu_used(&self) -> Result<f64> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT cpu, status FROM groups")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, f64>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut used = 0.0;
        for (cpu, status) in rows {
            if !parse_status(&status)?.is_terminal() {
                used += cpu;
            }
        }
        Ok(used)
    }

    // ---- containers ---------------------------------------------------------------------

    /// The group's containers: init containers first, each kind in spec order.
    /// Takes `count` GPUs of `pool` (PCI addresses, in order) that no group holds for group
    /// `id`, and records them in its spec; all or nothing. Deleting the group releases them.
    pub fn allocate_gpus(&self, id: &str, pool: &[String], count: u32) -> Result<Vec<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut taken = Vec::new();
        for bdf in pool {
            if taken.len() == count as usize {
                break;
            }
            let held: bool = tx
                .query_row("SELECT 1 FROM gpus WHERE bdf = ?1", [bdf], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if !held {
                tx.execute(
                    "INSERT INTO gpus (bdf, group_id) VALUES (?1, ?2)",
                    params![bdf, id],
                )?;
                taken.push(bdf.clone());
            }
        }
        if taken.len() < count as usize {
            return Err(StoreError::Exhausted(format!(
                "{count} GPU requested, {} free in the pool",
                taken.len()
            )));
        }
        let spec: String =
            tx.query_row("SELECT spec FROM groups WHERE id = ?1", [id], |r| r.get(0))?;
        let mut spec: ContainerGroupSpec = serde_json::from_str(&spec)?;
        spec.gpu_devices = taken.clone();
        tx.execute(
            "UPDATE groups SET spec = ?1 WHERE id = ?2",
            params![serde_json::to_string(&spec)?, id],
        )?;
        tx.commit()?;
        Ok(taken)
    }

    /// The GPUs group `id` holds.
    pub fn gpus_of(&self, id: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT bdf FROM gpus WHERE group_id = ?1 ORDER BY bdf")?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// GPUs held by all groups.
    pub fn gpus_used(&self) -> Result<u32> {
        let conn = self.lock();
        Ok(conn.query_row("SELECT COUNT(*) FROM gpus", [], |r| r.get(0))?)
    }

    pub fn containers(&self, group_id: &str) -> Result<Vec<ContainerRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, init, cri_id, status FROM containers WHERE group_id = ?1
             ORDER BY init DESC, position",
        )?;
        let rows = stmt
            .query_map([group_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(name, init, cri_container_id, status)| {
                Ok(ContainerRecord {
                    name,
                    init,
                    cri_container_id,
                    status: serde_json::from_str(&status)?,
                })
            })
            .collect()
    }

    /// Changes one container's record in place; returns false when it does not exist.
    /// The container's name and kind cannot change.
    pub fn update_container(
        &self,
        group_id: &str,
        name: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = tx
            .query_row(
                "SELECT init, cri_id, status FROM containers WHERE group_id = ?1 AND name = ?2",
                [group_id, name],
                |row| {
                    Ok((
                        row.get::<_, bool>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        let Some((init, cri_container_id, status)) = row else {
            return Ok(false);
        };
        let mut record = ContainerRecord {
            name: name.to_string(),
            init,
            cri_container_id,
            status: serde_json::from_str(&status)?,
        };
        change(&mut record);
        record.status.name = name.to_string();
        tx.execute(
            "UPDATE containers SET cri_id = ?3, status = ?4 WHERE group_id = ?1 AND name = ?2",
            params![
                group_id,
                name,
                record.cri_container_id,
                serde_json::to_string(&record.status)?
            ],
        )?;
        tx.execute(
            "UPDATE groups SET updated_at = ?2 WHERE id = ?1",
            params![group_id, time_text(now())],
        )?;
        tx.commit()?;
        Ok(true)
    }

    // ---- events -------------------------------------------------------------------------

    /// Appends an event to a group or image cache; a repeat of the owner's latest event (same
    /// type, reason and message) raises its count and time instead.
    pub fn add_event(
        &self,
        owner_id: &str,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let limit = if owner_id.starts_with("imc-") {
            MAX_IMAGE_CACHE_EVENTS
        } else {
            MAX_GROUP_EVENTS
        };
        let now = time_text(now());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let last: Option<(i64, String, String, String)> = tx
            .query_row(
                "SELECT seq, type, reason, message FROM events WHERE owner = ?1
                 ORDER BY seq DESC LIMIT 1",
                [owner_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        match last {
            Some((seq, last_type, last_reason, last_message))
                if last_type == event_type.as_str()
                    && last_reason == reason
                    && last_message == message =>
            {
                tx.execute(
                    "UPDATE events SET count = count + 1, time = ?2 WHERE seq = ?1",
                    params![seq, now],
                )?;
            }
            _ => {
                tx.execute(
                    "INSERT INTO events (owner, time, type, reason, message, count)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    params![owner_id, now, event_type.as_str(), reason, message],
                )?;
                tx.execute(
                    "DELETE FROM events WHERE owner = ?1 AND seq NOT IN
                     (SELECT seq FROM events WHERE owner = ?1 ORDER BY seq DESC LIMIT ?2)",
                    params![owner_id, limit as i64],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Events of a group or image cache, oldest first.
    pub fn events(&self, owner_id: &str) -> Result<Vec<Event>> {
        let conn = self.lock();
        events_of(&conn, owner_id)
    }

    // ---- image caches -------------------------------------------------------------------

    /// Stores a new image cache (status Creating); returns its id (`imc-...`).
    pub fn insert_image_cache(&self, spec: &ImageCacheSpec) -> Result<String> {
        let id = new_id("imc");
        let created = now();
        let expire = created + chrono::Duration::days(i64::from(spec.retention_days));
        self.lock().execute(
            "INSERT INTO image_caches (id, spec, status, created_at, expire_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                serde_json::to_string(spec)?,
                ImageCacheStatus::Creating.as_str(),
                time_text(created),
                time_text(expire)
            ],
        )?;
        Ok(id)
    }

    pub fn image_cache_record(&self, id: &str) -> Result<Option<ImageCacheRecord>> {
        Ok(self
            .image_cache_records()?
            .into_iter()
            .find(|record| record.id == id))
    }

    /// Every image cache, newest first.
    pub fn image_cache_records(&self) -> Result<Vec<ImageCacheRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, spec, status, created_at, expire_at FROM image_caches
             ORDER BY created_at DESC, id",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let now = now();
        rows.into_iter()
            .map(|(id, spec, status, created, expire)| {
                let expire_at = parse_time(&expire)?;
                let mut status: ImageCacheStatus = status.parse().map_err(StoreError::Corrupt)?;
                if status == ImageCacheStatus::Ready && expire_at <= now {
                    status = ImageCacheStatus::Expired;
                }
                Ok(ImageCacheRecord {
                    id,
                    spec: serde_json::from_str(&spec)?,
                    status,
                    created_at: parse_time(&created)?,
                    expire_at,
                })
            })
            .collect()
    }

    /// The API view of an image cache (with its events).
    pub fn get_image_cache(&self, id: &str) -> Result<Option<ImageCache>> {
        let Some(record) = self.image_cache_record(id)? else {
            return Ok(None);
        };
        let events = self.events(id)?;
        Ok(Some(api_image_cache(record, events)))
    }

    /// Every image cache, newest first, in the API view.
    pub fn list_image_caches(&self) -> Result<Vec<ImageCache>> {
        self.image_cache_records()?
            .into_iter()
            .map(|record| {
                let events = self.events(&record.id)?;
                Ok(api_image_cache(record, events))
            })
            .collect()
    }

    /// The newest Ready, unexpired cache holding every one of `images` (compared after
    /// `normalise`, e.g. "busybox" vs "docker.io/library/busybox:latest").
    pub fn find_image_cache(
        &self,
        images: &[String],
        normalise: impl Fn(&str) -> String,
    ) -> Result<Option<ImageCacheRecord>> {
        Ok(self.image_cache_records()?.into_iter().find(|record| {
            record.status == ImageCacheStatus::Ready
                && images.iter().all(|wanted| {
                    let wanted = normalise(wanted);
                    record
                        .spec
                        .images
                        .iter()
                        .any(|held| normalise(held) == wanted)
                })
        }))
    }

    pub fn set_image_cache_status(&self, id: &str, status: ImageCacheStatus) -> Result<bool> {
        let changed = self.lock().execute(
            "UPDATE image_caches SET status = ?2 WHERE id = ?1",
            params![id, status.as_str()],
        )?;
        Ok(changed > 0)
    }

    /// Renames and/or changes retention (expiry counts from creation).
    pub fn update_image_cache(
        &self,
        id: &str,
        name: Option<&str>,
        retention_days: Option<u32>,
    ) -> Result<bool> {
        let Some(mut record) = self.image_cache_record(id)? else {
            return Ok(false);
        };
        if let Some(name) = name {
            record.spec.name = name.to_string();
        }
        if let Some(days) = retention_days {
            record.spec.retention_days = days;
        }
        let expire =
            record.created_at + chrono::Duration::days(i64::from(record.spec.retention_days));
        let changed = self.lock().execute(
            "UPDATE image_caches SET spec = ?2, expire_at = ?3 WHERE id = ?1",
            params![id, serde_json::to_string(&record.spec)?, time_text(expire)],
        )?;
        Ok(changed > 0)
    }

    pub fn delete_image_cache(&self, id: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM events WHERE owner = ?1", [id])?;
        let changed = tx.execute("DELETE FROM image_caches WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(changed > 0)
    }
}

/// Makes the container rows follow the spec: new containers Waiting, gone ones removed,
/// positions and images updated.
fn sync_container_rows(
    tx: &rusqlite::Transaction<'_>,
    group_id: &str,
    spec: &ContainerGroupSpec,
) -> Result<()> {
    let mut keep = Vec::new();
    for (init, list) in [(true, &spec.init_containers), (false, &spec.containers)] {
        for (position, container) in list.iter().enumerate() {
            keep.push(container.name.clone());
            let existing: Option<String> = tx
                .query_row(
                    "SELECT status FROM containers WHERE group_id = ?1 AND name = ?2",
                    [group_id, &container.name],
                    |row| row.get(0),
                )
                .optional()?;
            let mut status: ContainerStatus = match existing {
                Some(json) => serde_json::from_str(&json)?,
                None => ContainerStatus {
                    name: container.name.clone(),
                    state: ContainerState::Waiting,
                    reason: Some("Created".to_string()),
                    ..ContainerStatus::default()
                },
            };
            status.image = container.image.clone();
            tx.execute(
                "INSERT INTO containers (group_id, name, init, position, status)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, name) DO UPDATE
                 SET init = ?3, position = ?4, status = ?5",
                params![
                    group_id,
                    container.name,
                    init,
                    position as i64,
                    serde_json::to_string(&status)?
                ],
            )?;
        }
    }
    let mut stmt = tx.prepare("SELECT name FROM containers WHERE group_id = ?1")?;
    let stored = stmt
        .query_map([group_id], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for name in stored.into_iter().filter(|name| !keep.contains(name)) {
        tx.execute(
            "DELETE FROM containers WHERE group_id = ?1 AND name = ?2",
            [group_id, &name],
        )?;
    }
    Ok(())
}

struct RawGroup {
    id: String,
    spec: String,
    status: String,
    ip: Option<String>,
    sandbox_id: Option<String>,
    created_at: String,
    updated_at: String,
}

fn raw_group(row: &Row<'_>) -> rusqlite::Result<RawGroup> {
    Ok(RawGroup {
        id: row.get(0)?,
        spec: row.get(1)?,
        status: row.get(2)?,
        ip: row.get(3)?,
        sandbox_id: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

impl RawGroup {
    fn into_record(self) -> Result<GroupRecord> {
        Ok(GroupRecord {
            spec: serde_json::from_str(&self.spec)?,
            status: parse_status(&self.status)?,
            created_at: parse_time(&self.created_at)?,
            updated_at: parse_time(&self.updated_at)?,
            id: self.id,
            ip: self.ip,
            sandbox_id: self.sandbox_id,
        })
    }
}

fn events_of(conn: &Connection, owner_id: &str) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare(
        "SELECT time, type, reason, message, count FROM events WHERE owner = ?1 ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([owner_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, u32>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(time, event_type, reason, message, count)| {
            Ok(Event {
                time: parse_time(&time)?,
                event_type: match event_type.as_str() {
                    "Warning" => EventType::Warning,
                    _ => EventType::Normal,
                },
                reason,
                message,
                count,
            })
        })
        .collect()
}

fn matches_filter(record: &GroupRecord, filter: &GroupFilter) -> bool {
    if filter
        .name
        .as_ref()
        .is_some_and(|name| *name != record.spec.name)
    {
        return false;
    }
    if filter.status.is_some_and(|status| status != record.status) {
        return false;
    }
    if let Some((key, value)) = &filter.tag {
        let found = record.spec.tags.iter().any(|Tag { key: k, value: v }| {
            k == key && value.as_ref().is_none_or(|value| value == v)
        });
        if !found {
            return false;
        }
    }
    true
}

fn api_group(record: GroupRecord, containers: Vec<ContainerRecord>) -> ContainerGroup {
    let (init, app): (Vec<_>, Vec<_>) = containers.into_iter().partition(|c| c.init);
    ContainerGroup {
        name: record.spec.name.clone(),
        status: record.status,
        cpu: record.spec.cpu,
        memory: record.spec.memory,
        ip: record.ip,
        created_at: record.created_at,
        updated_at: record.updated_at,
        restart_policy: record.spec.restart_policy,
        tags: record.spec.tags.clone(),
        containers: app.into_iter().map(|c| c.status).collect(),
        init_containers: init.into_iter().map(|c| c.status).collect(),
        spec: record.spec.redacted(),
        id: record.id,
    }
}

fn api_image_cache(record: ImageCacheRecord, events: Vec<Event>) -> ImageCache {
    ImageCache {
        id: record.id,
        name: record.spec.name,
        images: record.spec.images,
        status: record.status,
        retention_days: record.spec.retention_days,
        created_at: record.created_at,
        expire_at: record.expire_at,
        events,
    }
}

#[cfg(test)]
mod tests;
