//! The client commands.

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use reqwest::Method;

use super::client::{CliError, Client};
use super::{output, Command, Format, ImageCacheCommand};
use crate::model::{
    ContainerGroup, ContainerGroupList, CreatedResponse, EventList, ExecRequest, ExecResponse,
    GroupMetrics, ImageCache, ImageCacheList, Quota,
};

/// Reads a JSON or YAML document ("-" = stdin): `.json` is JSON, `.yaml`/`.yml` YAML, anything
/// else JSON if it parses as JSON, YAML otherwise.
pub fn read_document(path: &Path) -> Result<serde_json::Value, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?
    };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let as_json = || serde_json::from_str::<serde_json::Value>(&text);
    let as_yaml = || serde_norway::from_str::<serde_json::Value>(&text);
    let parsed = match extension {
        "json" => as_json().map_err(|e| e.to_string()),
        "yaml" | "yml" => as_yaml().map_err(|e| e.to_string()),
        _ => as_json().or_else(|_| as_yaml()).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| {
        CliError::Usage(format!(
            "{} is neither valid JSON nor YAML: {e}",
            path.display()
        ))
    })
}

fn group_path(id: &str) -> String {
    format!("/v1/containerGroups/{id}")
}

fn show<T: serde::Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => output::print_json(value),
        Format::Table => print!("{}", table(value)),
    }
}

pub async fn run(client: &Client, format: Format, command: Command) -> Result<i32, CliError> {
    match command {
        Command::Create { file } => {
            let body = read_document(&file)?;
            let created: CreatedResponse = client
                .call(Method::POST, "/v1/containerGroups", &[], Some(&body))
                .await?;
            show(format, &created, |c| format!("{}\n", c.id));
        }
        Command::Ls { name, status, tag } => {
            let query: Vec<(&str, String)> = [("name", name), ("status", status), ("tag", tag)]
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| (key, value)))
                .collect();
            let list: ContainerGroupList = client.get("/v1/containerGroups", &query).await?;
            show(format, &list, |l| output::groups(&l.container_groups));
        }
        Command::Describe { id } => {
            let group: ContainerGroup = client.get(&group_path(&id), &[]).await?;
            show(format, &group, output::group);
        }
        Command::Delete { id } => {
            client
                .send(Method::DELETE, &group_path(&id), &[], None::<&()>)
                .await?;
            show(format, &serde_json::json!({"id": id}), |_| {
                format!("{id}\n")
            });
        }
        Command::Restart { id } => {
            let group: ContainerGroup = client
                .call(
                    Method::POST,
                    &format!("{}/restart", group_path(&id)),
                    &[],
                    None::<&()>,
                )
                .await?;
            show(format, &group, |g| format!("{} {}\n", g.id, g.status));
        }
        Command::Update { id, file } => {
            let body = read_document(&file)?;
            let group: ContainerGroup = client
                .call(Method::PATCH, &group_path(&id), &[], Some(&body))
                .await?;
            show(format, &group, |g| format!("{} {}\n", g.id, g.status));
        }
        Command::Logs {
            id,
            container,
            follow,
            tail,
            since_seconds,
            timestamps,
        } => {
            let mut query = vec![
                ("follow", follow.to_string()),
                ("timestamps", timestamps.to_string()),
            ];
            query.extend(tail.map(|n| ("tail", n.to_string())));
            query.extend(since_seconds.map(|n| ("sinceSeconds", n.to_string())));
            let path = format!("{}/containers/{container}/logs", group_path(&id));
            let response = client.send(Method::GET, &path, &query, None::<&()>).await?;
            let mut stream = response.bytes_stream();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| CliError::Other(format!("log stream broke: {e}")))?;
                if stdout
                    .write_all(&chunk)
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    // The reader went away (e.g. `| head`): stop quietly.
                    break;
                }
            }
        }
        Command::Exec {
            stdin,
            tty,
            id,
            container,
            command,
        } => return exec(client, format, &id, &container, command, stdin, tty).await,
        Command::Events { id } => {
            let events: EventList = client
                .get(&format!("{}/events", group_path(&id)), &[])
                .await?;
            show(format, &events, |e| output::events(&e.events));
        }
        Command::Metrics { id } => {
            let metrics: GroupMetrics = client
                .get(&format!("{}/metrics", group_path(&id)), &[])
                .await?;
            show(format, &metrics, output::metrics);
        }
        Command::ImageCache(command) => image_cache(client, format, command).await?,
        Command::Quota => {
            let quota: Quota = client.get("/v1/quota", &[]).await?;
            show(format, &quota, output::quota);
        }
        Command::Serve(_) | Command::Openapi => unreachable!("handled by cli::run"),
    }
    Ok(0)
}

async fn exec(
    client: &Client,
    format: Format,
    id: &str,
    container: &str,
    command: Vec<String>,
    stdin: bool,
    tty: bool,
) -> Result<i32, CliError> {
    let path = format!("{}/containers/{container}/exec", group_path(id));
    let interactive = stdin || tty;
    let request = ExecRequest {
        command,
        stdin,
        tty,
        sync: !interactive,
    };
    let response: ExecResponse = client
        .call(Method::POST, &path, &[], Some(&request))
        .await?;
    match response {
        ExecResponse::Completed {
            stdout,
            stderr,
            exit_code,
        } => {
            if format == Format::Json {
                output::print_json(&ExecResponse::Completed {
                    stdout,
                    stderr,
                    exit_code,
                });
            } else {
                print!("{stdout}");
                eprint!("{stderr}");
                let _ = std::io::stdout().flush();
            }
            Ok(exit_code)
        }
        ExecResponse::Stream { web_socket_uri } => {
            super::exec_stream::attach(&web_socket_uri, stdin, tty).await
        }
    }
}

async fn image_cache(
    client: &Client,
    format: Format,
    command: ImageCacheCommand,
) -> Result<(), CliError> {
    match command {
        ImageCacheCommand::Create { file } => {
            let body = read_document(&file)?;
            let created: CreatedResponse = client
                .call(Method::POST, "/v1/imageCaches", &[], Some(&body))
                .await?;
            show(format, &created, |c| format!("{}\n", c.id));
        }
        ImageCacheCommand::Ls => {
            let list: ImageCacheList = client.get("/v1/imageCaches", &[]).await?;
            show(format, &list, |l| output::image_caches(&l.image_caches));
        }
        ImageCacheCommand::Describe { id } => {
            let cache: ImageCache = client.get(&format!("/v1/imageCaches/{id}"), &[]).await?;
            show(format, &cache, output::image_cache);
        }
        ImageCacheCommand::Rm { id } => {
            client
                .send(
                    Method::DELETE,
                    &format!("/v1/imageCaches/{id}"),
                    &[],
                    None::<&()>,
                )
                .await?;
            show(format, &serde_json::json!({"id": id}), |_| {
                format!("{id}\n")
            });
        }
    }
    Ok(())
}
