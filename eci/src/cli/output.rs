//! Tables and JSON for the CLI. Tables are plain space-aligned columns (like kubectl's), small
//! enough not to need a table crate.

use serde::Serialize;

use crate::model::{ContainerGroup, ContainerStatus, Event, GroupMetrics, ImageCache, Quota};

pub fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("eci: cannot print JSON: {err}"),
    }
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (index, cell) in row.iter().enumerate() {
            if index == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[index]));
            }
        }
        out.push('\n');
    }
    out
}

fn time(time: &chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn size(value: f64) -> String {
    format!("{value}")
}

pub fn groups(groups: &[ContainerGroup]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let ready = g.containers.iter().filter(|c| c.ready).count();
            vec![
                g.id.clone(),
                g.name.clone(),
                g.status.to_string(),
                format!("{ready}/{}", g.containers.len()),
                size(g.cpu),
                size(g.memory),
                g.ip.clone().unwrap_or_else(|| "-".into()),
                time(&g.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "READY",
            "CPU",
            "MEMORY(GiB)",
            "IP",
            "CREATED",
        ],
        &rows,
    )
}

fn container_rows(kind: &str, containers: &[ContainerStatus]) -> Vec<Vec<String>> {
    containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                kind.to_string(),
                c.image.clone(),
                format!("{:?}", c.state),
                c.ready.to_string(),
                c.restart_count.to_string(),
                c.exit_code
                    .map_or_else(|| "-".into(), |code| code.to_string()),
                c.reason.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

pub fn group(group: &ContainerGroup) -> String {
    let tags: Vec<String> = group
        .tags
        .iter()
        .map(|t| format!("{}={}", t.key, t.value))
        .collect();
    let mut out = format!(
        "ID:             {}\nName:           {}\nStatus:         {}\nCPU:            {}\nMemory (GiB):   {}\nIP:             {}\nRestart policy: {:?}\nTags:           {}\nCreated:        {}\nUpdated:        {}\n\n",
        group.id,
        group.name,
        group.status,
        group.cpu,
        group.memory,
        group.ip.as_deref().unwrap_or("-"),
        group.restart_policy,
        if tags.is_empty() { "-".into() } else { tags.join(", ") },
        time(&group.created_at),
        time(&group.updated_at),
    );
    let mut rows = container_rows("init", &group.init_containers);
    rows.extend(container_rows("app", &group.containers));
    out.push_str(&table(
        &[
            "CONTAINER",
            "KIND",
            "IMAGE",
            "STATE",
            "READY",
            "RESTARTS",
            "EXIT",
            "REASON",
        ],
        &rows,
    ));
    out
}

pub fn events(events: &[Event]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                time(&e.time),
                e.event_type.as_str().to_string(),
                e.reason.clone(),
                e.count.to_string(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "TYPE", "REASON", "COUNT", "MESSAGE"], &rows)
}

pub fn metrics(metrics: &GroupMetrics) -> String {
    let rows: Vec<Vec<String>> = metrics
        .containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.cpu.usage_nano_cores.to_string(),
                c.cpu.usage_core_nano_seconds.to_string(),
                c.cpu.limit.to_string(),
                c.memory.working_set.to_string(),
                c.memory.rss.to_string(),
                c.memory.available_bytes.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "CONTAINER",
            "UsageNanoCores",
            "UsageCoreNanoSeconds",
            "Limit(m)",
            "WorkingSet",
            "Rss",
            "AvailableBytes",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = metrics
        .network
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.rx_bytes.to_string(),
                i.tx_bytes.to_string(),
                i.rx_packets.to_string(),
                i.tx_packets.to_string(),
                format!("{}/{}", i.rx_errors, i.tx_errors),
                format!("{}/{}", i.rx_drops, i.tx_drops),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "INTERFACE",
                "RxBytes",
                "TxBytes",
                "RxPackets",
                "TxPackets",
                "ERRORS(rx/tx)",
                "DROPS(rx/tx)",
            ],
            &rows,
        ));
    }
    let rows: Vec<Vec<String>> = metrics
        .disk
        .iter()
        .map(|d| {
            vec![
                d.device.clone(),
                d.used_bytes.to_string(),
                d.capacity_bytes.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["DISK", "UsedBytes", "CapacityBytes"], &rows));
    }
    out
}

pub fn image_caches(caches: &[ImageCache]) -> String {
    let rows: Vec<Vec<String>> = caches
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.name.clone(),
                c.status.as_str().to_string(),
                c.retention_days.to_string(),
                time(&c.expire_at),
                c.images.join(","),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STATUS", "RETENTION(d)", "EXPIRES", "IMAGES"],
        &rows,
    )
}

pub fn image_cache(cache: &ImageCache) -> String {
    let mut out = image_caches(std::slice::from_ref(cache));
    out.push('\n');
    out.push_str(&events(&cache.events));
    out
}

pub fn quota(quota: &Quota) -> String {
    table(
        &["VCPU QUOTA", "VCPU USED"],
        &[vec![
            quota.vcpu_quota.to_string(),
            quota.vcpu_used.to_string(),
        ]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let text = table(
            &["ID", "NAME"],
            &[
                vec!["eci-1".into(), "web".into()],
                vec!["e".into(), "a".into()],
            ],
        );
        assert_eq!(text, "ID      NAME\neci-1   web\ne       a\n");
    }
}
