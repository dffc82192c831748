//! Container logs from CRI's log files: lines `<RFC 3339 time> <stream> <P|F> <content>` (P =
//! partial: the line continues in the next entry), with tail, since and follow.

use std::{
    io::{self, SeekFrom},
    path::PathBuf,
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use k8s_cri::v1::ContainerState as CriState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    backend::{BackendError, LogStream},
    model::LogOptions,
};

use super::cri::CriClient;

/// How often a follow stream looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// One log entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: DateTime<Utc>,
    pub stream: String,
    pub partial: bool,
    pub content: String,
}

/// Parses one line of a CRI log file (without its newline); `None` for malformed lines.
pub fn parse_line(line: &str) -> Option<Entry> {
    let mut parts = line.splitn(4, ' ');
    let time = DateTime::parse_from_rfc3339(parts.next()?)
        .ok()?
        .with_timezone(&Utc);
    let stream = parts.next()?.to_string();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("").to_string();
    Some(Entry {
        time,
        stream,
        partial: tag.split(':').any(|t| t == "P"),
        content,
    })
}

/// Joins partial entries into whole lines: (time of the first part, line with its newline).
#[derive(Debug, Default)]
pub struct LineAssembler {
    pending: Option<(DateTime<Utc>, String)>,
}

impl LineAssembler {
    pub fn push(&mut self, entry: Entry) -> Option<(DateTime<Utc>, String)> {
        let (time, mut text) = self
            .pending
            .take()
            .unwrap_or_else(|| (entry.time, String::new()));
        text.push_str(&entry.content);
        if entry.partial {
            self.pending = Some((time, text));
            None
        } else {
            text.push('\n');
            Some((time, text))
        }
    }
}

/// Formats complete lines of `text` per `options` (since, timestamps); the tail is applied by
/// the caller on the result.
fn render(
    lines: Vec<(DateTime<Utc>, String)>,
    options: &LogOptions,
    since: Option<DateTime<Utc>>,
) -> Vec<String> {
    lines
        .into_iter()
        .filter(|(time, _)| since.is_none_or(|s| *time >= s))
        .map(|(time, line)| {
            if options.timestamps {
                format!(
                    "{} {line}",
                    time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                )
            } else {
                line
            }
        })
        .collect()
}

/// Splits `buffer` into its complete lines (consumed) and leaves a trailing partial line in it.
fn complete_lines(
    buffer: &mut Vec<u8>,
    assembler: &mut LineAssembler,
) -> Vec<(DateTime<Utc>, String)> {
    let Some(end) = buffer.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = buffer.split_off(end + 1);
    let text = String::from_utf8_lossy(buffer).into_owned();
    *buffer = rest;
    text.lines()
        .filter_map(parse_line)
        .filter_map(|entry| assembler.push(entry))
        .collect()
}

/// The existing lines of the file with tail/since applied, plus the offset read up to.
pub fn initial(
    content: &[u8],
    options: &LogOptions,
    since: Option<DateTime<Utc>>,
) -> (Vec<String>, Vec<u8>, LineAssembler) {
    let mut buffer = content.to_vec();
    let mut assembler = LineAssembler::default();
    let lines = complete_lines(&mut buffer, &mut assembler);
    let mut rendered = render(lines, options, since);
    if let Some(tail) = options.tail {
        let skip = rendered.len().saturating_sub(tail as usize);
        rendered.drain(..skip);
    }
    (rendered, buffer, assembler)
}

/// The log stream of a container instance. A follow stream ends when the container is no
/// longer running and the file is read to its end, or when the client leaves.
pub fn stream(cri: CriClient, cri_id: String, path: PathBuf, options: LogOptions) -> LogStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BackendError>>(32);
    tokio::spawn(async move {
        if let Err(e) = pump(&cri, &cri_id, &path, &options, &tx).await {
            let _ = tx
                .send(Err(BackendError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                ))))
                .await;
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn pump(
    cri: &CriClient,
    cri_id: &str,
    path: &PathBuf,
    options: &LogOptions,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, BackendError>>,
) -> io::Result<()> {
    let since = options
        .since_seconds
        .map(|s| Utc::now() - chrono::Duration::seconds(s as i64));
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => Some(f),
        // No output yet.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut content = Vec::new();
    if let Some(f) = file.as_mut() {
        f.read_to_end(&mut content).await?;
    }
    let offset = content.len() as u64;
    let (lines, mut buffer, mut assembler) = initial(&content, options, since);
    if !lines.is_empty() && tx.send(Ok(Bytes::from(lines.concat()))).await.is_err() {
        return Ok(());
    }
    if !options.follow {
        return Ok(());
    }
    let mut offset = offset;
    loop {
        if file.is_none() {
            file = tokio::fs::File::open(path).await.ok();
        }
        let mut chunk = Vec::new();
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::Start(offset)).await?;
            f.read_to_end(&mut chunk).await?;
        }
        if chunk.is_empty() {
            if tx.is_closed() {
                return Ok(());
            }
            let running = cri
                .container_status(cri_id)
                .await
                .map(|s| {
                    s.state == CriState::ContainerRunning as i32
                        || s.state == CriState::ContainerCreated as i32
                })
                .unwrap_or(false);
            if !running {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        }
        offset += chunk.len() as u64;
        buffer.extend_from_slice(&chunk);
        let lines = render(complete_lines(&mut buffer, &mut assembler), options, since);
        if !lines.is_empty() && tx.send(Ok(Bytes::from(lines.concat()))).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n\
2026-01-01T00:00:02Z stderr F two\n\
2026-01-01T00:00:03Z stdout P thr\n\
2026-01-01T00:00:03.5Z stdout F ee\n\
2026-01-01T00:00:04Z stdout F \n\
2026-01-01T00:00:05Z stdout F incomplete";

    #[test]
    fn parses_cri_lines() {
        let e = parse_line("2026-01-01T00:00:01.5Z stderr P a b c").unwrap();
        assert_eq!(e.stream, "stderr");
        assert!(e.partial);
        assert_eq!(e.content, "a b c");
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn joins_partials_and_keeps_the_unfinished_line() {
        let (lines, rest, _) = initial(LOG.as_bytes(), &LogOptions::default(), None);
        assert_eq!(lines, ["one\n", "two\n", "three\n", "\n"]);
        assert_eq!(rest, b"2026-01-01T00:00:05Z stdout F incomplete");
    }

    #[test]
    fn tail_since_and_timestamps() {
        let options = LogOptions {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(initial(LOG.as_bytes(), &options, None).0, ["three\n", "\n"]);
        let since = "2026-01-01T00:00:02Z".parse().unwrap();
        assert_eq!(
            initial(LOG.as_bytes(), &LogOptions::default(), Some(since)).0,
            ["two\n", "three\n", "\n"]
        );
        let options = LogOptions {
            tail: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            initial(LOG.as_bytes(), &options, None).0,
            ["2026-01-01T00:00:04.000000000Z \n"]
        );
    }
}
