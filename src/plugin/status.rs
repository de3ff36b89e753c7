//! `kubectl leaderlock status [NAME]`: one row per lock — holder, fencing token, candidates,
//! since, paused — and with `-o wide` the queue in etcd's order; `-o json|yaml` prints the
//! LeaderLocks' status for scripts.

use std::io::Write;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::PluginError;
use super::connect::Connection;
use crate::resource::{LeaderLock, LockStatus};

/// How `status` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One row per lock.
    #[default]
    Table,
    /// The table plus each lock's queue, holder first.
    Wide,
    /// `{"items": [{namespace, name, paused, status}]}`.
    Json,
    /// The same as YAML.
    Yaml,
}

/// What `status` reads: one LeaderLock, a namespace's or every namespace's.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub name: Option<String>,
    pub all_namespaces: bool,
    pub format: Format,
}

pub async fn run(conn: &Connection, query: &Query, out: &mut dyn Write) -> Result<(), PluginError> {
    let lls = fetch(conn, query).await?;
    if lls.is_empty() {
        let scope = if query.all_namespaces { "any namespace".to_string() } else { format!("namespace {}", conn.namespace) };
        eprintln!("No LeaderLocks found in {scope}.");
        return Ok(());
    }
    let text = match query.format {
        Format::Table | Format::Wide => {
            let columns = Columns { namespace: query.all_namespaces, queue: query.format == Format::Wide };
            render_table(&rows(&lls), columns, jiff::Timestamp::now()) + &render_placement(&lls, query.all_namespaces)
        }
        Format::Json => serde_json::to_string_pretty(&document(&lls)).map(|s| s + "\n").map_err(output_error)?,
        Format::Yaml => serde_saphyr::to_string(&document(&lls)).map_err(output_error)?,
    };
    out.write_all(text.as_bytes()).map_err(output_error)
}

fn output_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::Output { what: "the status".into(), detail: e.to_string() }
}

async fn fetch(conn: &Connection, query: &Query) -> Result<Vec<LeaderLock>, PluginError> {
    let api: Api<LeaderLock> =
        if query.all_namespaces { Api::all(conn.client.clone()) } else { Api::namespaced(conn.client.clone(), &conn.namespace) };
    let mut lls = match &query.name {
        Some(name) => {
            let found = api.get_opt(name).await.map_err(|e| PluginError::api(format!("reading LeaderLock {name}"), e))?;
            vec![found.ok_or_else(|| PluginError::LeaderLockNotFound { namespace: conn.namespace.clone(), name: name.clone() })?]
        }
        None => api.list(&ListParams::default()).await.map_err(|e| PluginError::api("listing LeaderLocks", e))?.items,
    };
    lls.sort_by_key(|ll| (ll.namespace(), ll.name_any()));
    Ok(lls)
}

/// `{"items": [...]}`: each LeaderLock's identity, `spec.paused` and status, in name order.
fn document(lls: &[LeaderLock]) -> Value {
    let items: Vec<Value> = lls
        .iter()
        .map(|ll| {
            json!({
                "namespace": ll.namespace(),
                "name": ll.name_any(),
                "paused": ll.spec.paused,
                "status": ll.status,
            })
        })
        .collect();
    json!({ "items": items })
}

/// One lock of one LeaderLock, as the table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub leaderlock: String,
    pub lock: String,
    pub paused: bool,
    pub status: LockStatus,
}

/// A row per lock, in spec order; a lock the controller has not reported yet has an empty status.
pub fn rows(lls: &[LeaderLock]) -> Vec<Row> {
    let mut rows = Vec::new();
    for ll in lls {
        let reported = ll.status.as_ref().map(|s| s.locks.as_slice()).unwrap_or_default();
        for lock in ll.spec.lock_specs().iter() {
            let status = reported.iter().find(|s| s.name == lock.name).cloned().unwrap_or_default();
            rows.push(Row {
                namespace: ll.namespace().unwrap_or_default(),
                leaderlock: ll.name_any(),
                lock: lock.name.clone(),
                paused: ll.spec.paused,
                status,
            });
        }
    }
    rows
}

/// Optional columns: NAMESPACE with `-A`, QUEUE with `-o wide`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns {
    pub namespace: bool,
    pub queue: bool,
}

const NONE: &str = "<none>";

/// The table, columns separated by three spaces as kubectl prints them.
pub fn render_table(rows: &[Row], columns: Columns, now: jiff::Timestamp) -> String {
    let mut header = vec!["LEADERLOCK", "LOCK", "HOLDER", "TOKEN", "CANDIDATES", "SINCE", "PAUSED"];
    if columns.namespace {
        header.insert(0, "NAMESPACE");
    }
    if columns.queue {
        header.push("QUEUE");
    }
    let mut lines: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for row in rows {
        let st = &row.status;
        let mut cells = vec![
            row.leaderlock.clone(),
            row.lock.clone(),
            st.holder.clone().unwrap_or_else(|| NONE.into()),
            st.fencing_token.clone().unwrap_or_else(|| NONE.into()),
            st.candidates.to_string(),
            st.since.as_deref().map_or_else(|| NONE.into(), |since| age(since, now)),
            row.paused.to_string(),
        ];
        if columns.namespace {
            cells.insert(0, row.namespace.clone());
        }
        if columns.queue {
            cells.push(if st.queue.is_empty() { NONE.into() } else { st.queue.join(",") });
        }
        lines.push(cells);
    }
    align(&lines)
}

/// For LeaderLocks placed by Spread, a second table after a blank line: policy, whether
/// placement has settled, and how many locks each pod leads (`external=N` and `vacant=N` when
/// there are any). Empty when no LeaderLock uses Spread, so the lock table stays the whole output.
pub fn render_placement(lls: &[LeaderLock], namespace: bool) -> String {
    let mut lines: Vec<Vec<String>> = Vec::new();
    for ll in lls {
        let Some(p) = ll.status.as_ref().and_then(|s| s.placement.as_ref()).filter(|p| p.policy == "Spread") else { continue };
        let mut counts: Vec<String> = p.distribution.iter().map(|d| format!("{}={}", d.pod, d.locks)).collect();
        counts.extend((p.external > 0).then(|| format!("external={}", p.external)));
        counts.extend((p.vacant > 0).then(|| format!("vacant={}", p.vacant)));
        let mut cells =
            vec![ll.name_any(), p.policy.clone(), p.settled.to_string(), if counts.is_empty() { NONE.into() } else { counts.join(",") }];
        if namespace {
            cells.insert(0, ll.namespace().unwrap_or_default());
        }
        lines.push(cells);
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut header = vec!["LEADERLOCK", "POLICY", "SETTLED", "LOCKS PER POD"];
    if namespace {
        header.insert(0, "NAMESPACE");
    }
    lines.insert(0, header.into_iter().map(String::from).collect());
    format!("\n{}", align(&lines))
}

fn align(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|i| lines.iter().map(|l| l.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for line in lines {
        let mut padded = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                padded.push_str(cell);
            } else {
                padded.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        text.push_str(padded.trim_end());
        text.push('\n');
    }
    text
}

/// How long ago `since` (RFC 3339) was, in kubectl's AGE style: `45s`, `12m`, `5h`, `3d`.
/// A timestamp that does not parse is shown as it is.
pub fn age(since: &str, now: jiff::Timestamp) -> String {
    let Ok(then) = since.parse::<jiff::Timestamp>() else { return since.to_string() };
    let secs = (now.as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ll: &str, lock: &str, holder: Option<&str>, token: Option<&str>, queue: &[&str]) -> Row {
        Row {
            namespace: "shop".into(),
            leaderlock: ll.into(),
            lock: lock.into(),
            paused: false,
            status: LockStatus {
                name: lock.into(),
                holder: holder.map(String::from),
                fencing_token: token.map(String::from),
                since: holder.map(|_| "2026-12-01T10:00:00Z".into()),
                candidates: queue.len() as i32,
                transitions: 1,
                queue: queue.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-12-01T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn the_table_has_one_aligned_row_per_lock_and_none_where_nobody_holds() {
        let rows = [row("payments", "ledger-writer", Some("w-1"), Some("18"), &["w-1", "w-2"]), row("payments", "report", None, None, &[])];
        let text = render_table(&rows, Columns::default(), now());
        assert_eq!(
            text,
            "LEADERLOCK   LOCK            HOLDER   TOKEN    CANDIDATES   SINCE    PAUSED\n\
             payments     ledger-writer   w-1      18       2            5m       false\n\
             payments     report          <none>   <none>   0            <none>   false\n"
        );
    }

    #[test]
    fn wide_adds_the_queue_in_order_and_all_namespaces_the_namespace() {
        let rows = [row("payments", "ledger", Some("w-2"), Some("20"), &["w-2", "etcd:/legacy/x/1", "w-1"])];
        let text = render_table(&rows, Columns { namespace: true, queue: true }, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   LEADERLOCK") && lines[0].ends_with("PAUSED   QUEUE"), "{text}");
        assert!(lines[1].starts_with("shop        payments") && lines[1].ends_with("false    w-2,etcd:/legacy/x/1,w-1"), "{text}");
    }

    #[test]
    fn spread_leaderlocks_get_a_placement_table_with_locks_per_pod_and_queue_ones_none() {
        use crate::resource::{LeaderLockStatus, PlacementStatus, PodLocks};
        let ll = |name: &str, policy: &str| {
            let spec = serde_json::json!({"selector": {"matchLabels": {"app": "w"}}, "shards": 8});
            let mut ll = LeaderLock::new(name, serde_json::from_value(spec).unwrap());
            ll.metadata.namespace = Some("shop".into());
            let distribution = [("w-1", 3), ("w-2", 3), ("w-3", 2)].map(|(pod, locks)| PodLocks { pod: pod.into(), locks }).to_vec();
            let placement = PlacementStatus { policy: policy.into(), distribution, external: 0, vacant: 1, settled: true };
            ll.status = Some(LeaderLockStatus { placement: Some(placement), ..Default::default() });
            ll
        };
        assert_eq!(render_placement(&[ll("queued", "Queue")], false), "");
        let text = render_placement(&[ll("queued", "Queue"), ll("shards", "Spread")], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "", "a blank line after the lock table");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["NAMESPACE", "LEADERLOCK", "POLICY", "SETTLED", "LOCKS", "PER", "POD"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["shop", "shards", "Spread", "true", "w-1=3,w-2=3,w-3=2,vacant=1"]);
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (since, want) in [
            ("2026-12-01T10:04:15Z", "45s"),
            ("2026-12-01T09:53:00Z", "12m"),
            ("2026-12-01T05:00:00Z", "5h"),
            ("2026-11-28T10:05:00Z", "3d"),
            ("2026-12-01T10:06:00Z", "0s"),
            ("yesterday", "yesterday"),
        ] {
            assert_eq!(age(since, now()), want, "{since}");
        }
    }

    #[test]
    fn a_lock_the_controller_has_not_reported_yet_gets_an_empty_row_in_spec_order() {
        let ll: LeaderLock = serde_json::from_value(json!({
            "apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "w"}}, "locks": [{"name": "a"}, {"name": "b"}], "paused": true},
            "status": {"locks": [{"name": "b", "holder": "w-1", "fencingToken": "7", "candidates": 1}]},
        }))
        .unwrap();
        let rows = rows(&[ll]);
        assert_eq!(
            rows.iter().map(|r| (r.lock.as_str(), r.status.holder.as_deref(), r.paused)).collect::<Vec<_>>(),
            [("a", None, true), ("b", Some("w-1"), true)]
        );
    }
}
