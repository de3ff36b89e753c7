//! The soak scenario's measurements: the controller's resident memory and the size of every map
//! it exports, sampled during churn, and the judgement that they stay flat.
//!
//! Flat means: the median of the last quarter of the samples is at most the median of the second
//! quarter plus a tolerance (the first quarter is warm-up: caches filling, the allocator reaching
//! its working size). Under steady churn a bounded structure moves around its working size and
//! the two medians agree; a structure that keeps something per deleted object grows with time,
//! and its later median is higher by half of the whole run's growth. Medians make a burst of
//! events at one sampling instant harmless.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::ControllerProcess;

/// The gauge family the controller exports one sample per map of (docs/contract.md §5).
pub const MAP_GAUGE: &str = "leaderlock_map_entries{map=\"<name>\"}";

/// How much the last quarter's median may exceed the second quarter's.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// A fraction of the second quarter's median.
    pub relative: f64,
    /// A floor, in the series' unit, for small series.
    pub absolute: f64,
}

/// RSS: 10%, at least 4 MiB. glibc's allocator (capped at two arenas by the controller) keeps
/// freed pages and grows in steps of whole heaps, so RSS moves by a few MiB without any leak;
/// growth of more than a fifth of the working set over the run is caught.
pub const RSS: Tolerance = Tolerance { relative: 0.10, absolute: 4096.0 };

/// Map sizes: 10%, at least 2 entries. Entries follow live objects, whose number the churn keeps
/// around the fleet's mean (3..=7 pods per LeaderLock, drawn anew on every scale step); 10%
/// covers that drift between two medians, 2 entries a small map's objects caught between a
/// write and its watch event.
pub const MAPS: Tolerance = Tolerance { relative: 0.10, absolute: 2.0 };

/// One sample, taken during churn.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: Option<u64>,
    /// None when /metrics did not answer.
    pub maps: Option<BTreeMap<String, f64>>,
}

/// Reads the current incarnation's VmRSS and its map gauges.
pub fn sample(ctl: &ControllerProcess, start: Instant) -> Sample {
    Sample { at: start.elapsed(), rss_kib: ctl.rss_kib(), maps: ctl.map_entries() }
}

/// The verdict on one series.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: String,
    pub early_median: f64,
    pub late_median: f64,
    pub limit: f64,
}

impl Verdict {
    pub fn flat(&self) -> bool {
        self.late_median <= self.limit
    }
}

/// Judges `series` (in sampling order, at least 4 values) against `tol`.
pub fn judge(name: &str, series: &[f64], tol: Tolerance) -> Verdict {
    let q = series.len() / 4;
    let early_median = median(&series[q..2 * q]);
    let late_median = median(&series[series.len() - q..]);
    let limit = early_median + (early_median * tol.relative).max(tol.absolute);
    Verdict { name: name.to_string(), early_median, late_median, limit }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The RSS verdict (KiB), or why there is none.
pub fn judge_rss(samples: &[Sample]) -> Result<Verdict, String> {
    let rss: Vec<f64> = samples.iter().filter_map(|s| s.rss_kib).map(|k| k as f64).collect();
    if rss.len() < 8 || rss.len() < samples.len() / 2 {
        return Err(format!("VmRSS could be read in only {} of {} samples", rss.len(), samples.len()));
    }
    Ok(judge("RSS (KiB)", &rss, RSS))
}

/// One verdict per map, or a message naming the missing gauge family.
pub fn judge_maps(samples: &[Sample]) -> Result<Vec<Verdict>, String> {
    let answered: Vec<&BTreeMap<String, f64>> = samples.iter().filter_map(|s| s.maps.as_ref()).collect();
    let names: Vec<&String> = answered.iter().flat_map(|m| m.keys()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if names.is_empty() || answered.len() < 8 {
        return Err(format!(
            "the controller's /metrics has no gauge family {MAP_GAUGE} ({} of {} scrapes answered): map sizes cannot be judged; the controller must export one such gauge per map it keeps",
            answered.len(),
            samples.len()
        ));
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let series: Vec<f64> = answered.iter().map(|m| m.get(name).copied().unwrap_or(0.0)).collect();
            judge(&format!("map {name}"), &series, MAPS)
        })
        .collect())
}

/// A Markdown table of the verdicts.
pub fn table(verdicts: &[Verdict]) -> String {
    let mut md = String::from("| series | median, 2nd quarter | median, last quarter | limit | flat |\n|---|---|---|---|---|\n");
    for v in verdicts {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} |\n",
            v.name,
            v.early_median,
            v.late_median,
            v.limit,
            if v.flat() { "yes" } else { "**no**" }
        ));
    }
    md
}

/// How long the soak churns: `CHAOS_SOAK_SECS`, default 30 minutes.
pub fn duration() -> Duration {
    Duration::from_secs(std::env::var("CHAOS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800))
}

#[test]
fn a_series_that_grows_steadily_is_not_flat_and_a_noisy_bounded_one_is() {
    // 25% growth over the run: the last quarter's median is 12.5% above the second's.
    let growing: Vec<f64> = (0..100).map(|i| 1000.0 + 2.5 * f64::from(i)).collect();
    assert!(!judge("leak", &growing, MAPS).flat(), "{:?}", judge("leak", &growing, MAPS));
    let bounded: Vec<f64> = (0..100).map(|i| 1000.0 + f64::from((i * 37) % 100)).collect();
    assert!(judge("bounded", &bounded, MAPS).flat(), "{:?}", judge("bounded", &bounded, MAPS));
    let warm_up_then_flat: Vec<f64> = (0..100)
        .map(|i| {
            if i < 20 {
                f64::from(i) * 50.0
            } else if i == 90 {
                5000.0
            } else {
                1000.0
            }
        })
        .collect();
    assert!(judge("warm-up and a spike", &warm_up_then_flat, RSS).flat());
}

#[test]
fn the_map_gauges_are_read_by_name_and_their_absence_is_named() {
    let metrics = "# TYPE leaderlock_map_entries gauge\nleaderlock_map_entries{map=\"ryw_cache\"} 12\nleaderlock_map_entries{map=\"engine_last_holder\"} 3\nleaderlock_active 1\n";
    let maps = crate::common::controller::map_entries(metrics);
    assert_eq!(maps.into_iter().collect::<Vec<_>>(), [("engine_last_holder".to_string(), 3.0), ("ryw_cache".to_string(), 12.0)]);
    let samples = vec![Sample { at: Duration::ZERO, rss_kib: Some(1), maps: Some(BTreeMap::new()) }];
    assert!(judge_maps(&samples).unwrap_err().contains("leaderlock_map_entries{map="));
}
