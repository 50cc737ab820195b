//! A drill's verdict and report: the SLO checks, time to recover per fault, and a
//! JSON document plus one self-contained HTML page (inline SVG timelines with fault
//! markers), viewable offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use rankmesh_loadgen::Report as Load;

use crate::scenario::Slo;

/// A fault as it happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Injected {
    pub at_s: f64,
    pub kind: String,
    pub detail: String,
    /// `name:version` the fault published, whose answers count as wrong.
    pub forbidden_model: Option<String>,
    /// Seconds from the fault until every following second was clean again (None:
    /// it never was before the run ended); for a surge, from its end.
    pub recovered_after_s: Option<f64>,
    /// A surge: when it ended (its refusals until then are the designed answer).
    pub ends_at_s: Option<f64>,
    /// Instances it killed (they are not expected back in discovery).
    #[serde(skip)]
    pub killed: Vec<String>,
    /// A canary fault: the production ranker (`ranker:N`) every answer must come
    /// from once the canary is rolled back.
    pub production_model: Option<String>,
    /// A canary fault: seconds from the fault until the registry's stage history
    /// recorded the canary's rollback (None: it never did).
    pub rolled_back_after_s: Option<f64>,
    /// A rollout fault: the versions answers must move between.
    pub rollout: Option<Rollout>,
}

/// A model rolled out under load: answers by `from`, then by `to`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// `name:version` in production before.
    pub from: String,
    /// `name:version` promoted.
    pub to: String,
}

impl Injected {
    /// A fault of `kind` injected at `at_s`, before its details are known.
    pub fn new(kind: &str, at_s: f64) -> Self {
        Self {
            at_s,
            kind: kind.to_owned(),
            ..Self::default()
        }
    }
}

/// What a drill's RecordEvent load measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Events {
    /// Acknowledged during the load.
    pub acked: u64,
    /// Acknowledged ones missing afterwards; None when they could not be read back
    /// (the feature service was down).
    pub lost: Option<u64>,
    /// Refused during the load, by status code (how writes failed).
    pub refused: BTreeMap<String, u64>,
}

/// Whether the instances that outlived the drill were all registered in discovery
/// again at its end (a hung or partitioned instance whose lease expired must come
/// back by itself).
#[derive(Debug, Clone, Serialize)]
pub enum Rejoined {
    /// Every surviving instance is listed; how many.
    All(usize),
    /// Those still missing after the wait.
    Missing(Vec<String>),
    /// No etcd member was left to ask (a drill that kills etcd).
    NotChecked,
}

/// One SLO line.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub name: String,
    pub hypothesis: String,
    pub pass: bool,
    pub checks: Vec<Check>,
    pub faults: Vec<Injected>,
    pub requests_lost: u64,
    pub wrong_version_answers: u64,
    /// What the RecordEvent load measured; None when the drill offered none.
    pub events: Option<Events>,
    pub rejoined: Rejoined,
    /// What the SDK was allowed to do (a weakened run turns these off).
    pub client: String,
    pub load: Load,
}

/// Whether second `s` of the run was clean: no errors and p99 within bound.
fn clean(s: &rankmesh_loadgen::Second, p99_ms: f64) -> bool {
    s.errors == 0 && s.p99_ms <= p99_ms
}

/// Seconds from `at_s` until every following second (before `until_s`) is clean.
pub fn recovery(load: &Load, at_s: f64, until_s: f64, p99_ms: f64) -> Option<f64> {
    let from = at_s.floor() as u64;
    let until = until_s.ceil() as u64;
    let window: Vec<&rankmesh_loadgen::Second> = load
        .timeline
        .iter()
        .filter(|s| s.second >= from && s.second < until)
        .collect();
    match window.iter().rposition(|s| !clean(s, p99_ms)) {
        None => Some(0.0),
        Some(i) if i + 1 == window.len() => None,
        Some(i) => Some((window[i].second + 1) as f64 - at_s),
    }
}

/// What a run measured and what it was meant to show: the judge's inputs.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub name: &'a str,
    pub hypothesis: &'a str,
    pub slo: &'a Slo,
    pub faults: Vec<Injected>,
    pub load: Load,
    /// Events acknowledged during the load; None when the drill recorded none.
    pub events: Option<Events>,
    pub rejoined: Rejoined,
    pub client: String,
}

/// Judges a run against its SLO.
pub fn judge(i: Inputs<'_>) -> DrillReport {
    let Inputs {
        name,
        hypothesis,
        slo,
        mut faults,
        load,
        events,
        rejoined,
        client,
    } = i;
    mark_recovery(&mut faults, &load, slo.p99_ms);
    let wrong = wrong_version_answers(&faults, &load);
    // Refusals in surges are the designed answer: not lost, judged on their own.
    let refused = refused_in_surges(&faults, &load);
    let mut checks = slo_checks(slo, &load, &faults, wrong, refused);
    if let Some(o) = &slo.overload {
        checks.extend(overload_checks(o, &load, &faults, refused));
    }
    for f in faults.iter().filter(|f| f.production_model.is_some()) {
        checks.extend(canary_checks(f, &load, slo));
    }
    for f in &faults {
        if let Some(r) = &f.rollout {
            checks.extend(rollout_checks(f, r, &load));
        }
    }
    if let Some(e) = &events {
        checks.push(events_check(e, slo));
    }
    checks.push(rejoined_check(&rejoined));
    DrillReport {
        name: name.to_owned(),
        hypothesis: hypothesis.to_owned(),
        pass: checks.iter().all(|c| c.pass),
        checks,
        faults,
        requests_lost: load.failed - refused.min(load.failed),
        wrong_version_answers: wrong,
        events,
        rejoined,
        client,
        load,
    }
}

/// When each fault's effect ended: judged up to the next fault (or the end). The
/// second in which the next fault starts is the next fault's: a fault injected
/// at 10.001 s must not charge its first errors to the one before.
fn mark_recovery(faults: &mut [Injected], load: &Load, p99_ms: f64) {
    let mut next_at: Vec<f64> = faults.iter().skip(1).map(|f| f.at_s.floor()).collect();
    next_at.push(load.duration_s);
    for (f, until) in faults.iter_mut().zip(next_at) {
        let from = f.ends_at_s.unwrap_or(f.at_s);
        f.recovered_after_s = recovery(load, from, until.max(from + 1.0), p99_ms);
    }
}

/// The whole seconds of the run inside a surge, and those it touches.
fn surge_seconds(faults: &[Injected]) -> (Vec<u64>, Vec<u64>) {
    let (mut inside, mut touched) = (Vec::new(), Vec::new());
    for f in faults {
        let Some(end) = f.ends_at_s else { continue };
        inside.extend(f.at_s.ceil() as u64..end.floor() as u64);
        touched.extend(f.at_s.floor() as u64..end.ceil() as u64);
    }
    (inside, touched)
}

/// Refusals (RESOURCE_EXHAUSTED) in the seconds a surge touches: the designed
/// answer to it, not lost requests.
fn refused_in_surges(faults: &[Injected], load: &Load) -> u64 {
    let (_, touched) = surge_seconds(faults);
    load.timeline
        .iter()
        .filter(|s| touched.contains(&s.second))
        .filter_map(|s| s.errors_by_code.get(REFUSED))
        .sum()
}

/// The status code of an admission refusal, as the load names it.
const REFUSED: &str = "ResourceExhausted";

/// The overload checks: the mesh kept serving through each surge, refused the
/// excess fast, answered what it took within bound, and was overloaded at all.
fn overload_checks(
    o: &crate::scenario::OverloadSlo,
    load: &Load,
    faults: &[Injected],
    refused: u64,
) -> Vec<Check> {
    let (inside, _) = surge_seconds(faults);
    let seconds: Vec<&rankmesh_loadgen::Second> = load
        .timeline
        .iter()
        .filter(|s| inside.contains(&s.second))
        .collect();
    let answered: u64 = seconds.iter().map(|s| s.requests - s.errors).sum();
    let goodput = answered as f64 / seconds.len().max(1) as f64;
    let p99 = |outcome: &str| load.latency_by_outcome_ms.get(outcome).map(|l| l.p99);
    let refusal_p99 = p99(REFUSED).unwrap_or(0.0);
    let answered_p99 = p99("Ok").unwrap_or(f64::INFINITY);
    vec![
        Check {
            what: "overloaded".into(),
            target: "refusals during the surge > 0".into(),
            measured: format!("{refused} refused"),
            pass: refused > 0,
        },
        Check {
            what: "goodput in the surge".into(),
            target: format!(
                ">= {:.0}% of the base {} qps",
                o.goodput_ratio * 100.0,
                load.qps
            ),
            measured: format!("{goodput:.1} answered/s over {} s", seconds.len()),
            pass: !seconds.is_empty() && goodput >= o.goodput_ratio * load.qps,
        },
        Check {
            what: "refusal p99".into(),
            target: format!("<= {} ms", o.refusal_p99_ms),
            measured: format!("{refusal_p99:.1} ms"),
            pass: refusal_p99 <= o.refusal_p99_ms,
        },
        Check {
            what: "answered p99".into(),
            target: format!("<= {} ms", o.answered_p99_ms),
            measured: format!("{answered_p99:.1} ms"),
            pass: answered_p99 <= o.answered_p99_ms,
        },
    ]
}

/// Answers that came from a model a fault made forbidden.
fn wrong_version_answers(faults: &[Injected], load: &Load) -> u64 {
    let forbidden: Vec<&str> = faults
        .iter()
        .filter_map(|f| f.forbidden_model.as_deref())
        .collect();
    load.timeline
        .iter()
        .flat_map(|s| s.models.iter())
        .filter(|(m, _)| forbidden.contains(&m.as_str()))
        .map(|(_, n)| n)
        .sum()
}

/// The checks every drill has: availability, p99, time to recover, wrong-version
/// answers.
fn slo_checks(slo: &Slo, load: &Load, faults: &[Injected], wrong: u64, refused: u64) -> Vec<Check> {
    let failed = load.failed - refused.min(load.failed);
    let availability = 1.0 - failed as f64 / load.sent.max(1) as f64;
    let worst_rto = faults
        .iter()
        .map(|f| f.recovered_after_s.unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);
    vec![
        Check {
            what: "availability".into(),
            target: format!(">= {:.3}%", slo.availability * 100.0),
            measured: format!(
                "{:.3}% ({failed} of {} failed{})",
                availability * 100.0,
                load.sent,
                if refused > 0 {
                    format!("; {refused} refused in surges not counted")
                } else {
                    String::new()
                }
            ),
            pass: availability >= slo.availability,
        },
        Check {
            what: "p99".into(),
            target: format!("<= {} ms", slo.p99_ms),
            measured: format!("{:.1} ms", load.latency_ms.p99),
            pass: load.latency_ms.p99 <= slo.p99_ms,
        },
        Check {
            what: "time to recover".into(),
            target: format!("<= {} s", slo.recover_within_s),
            measured: if faults.is_empty() {
                "no faults".into()
            } else if worst_rto.is_finite() {
                format!("{worst_rto:.1} s (worst fault)")
            } else {
                "not recovered".into()
            },
            pass: worst_rto <= slo.recover_within_s,
        },
        Check {
            what: "wrong-version answers".into(),
            target: format!("<= {}", slo.wrong_version_answers),
            measured: wrong.to_string(),
            pass: wrong <= slo.wrong_version_answers,
        },
    ]
}

/// Acknowledged events must all be kept; a drill about events proves nothing when
/// none was acknowledged.
fn events_check(e: &Events, slo: &Slo) -> Check {
    let lost = match e.lost {
        _ if e.acked == 0 => "no event acknowledged".into(),
        None => "not read back".into(),
        Some(n) => format!("{n} of {}", e.acked),
    };
    let refused: Vec<String> = e
        .refused
        .iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect();
    Check {
        what: "acknowledged events lost".into(),
        target: format!("<= {}, of > 0", slo.lost_events),
        measured: if refused.is_empty() {
            lost
        } else {
            format!("{lost} (refused: {})", refused.join(", "))
        },
        pass: e.acked > 0 && e.lost.is_some_and(|n| n <= slo.lost_events),
    }
}

/// Every instance not killed must be back in discovery.
fn rejoined_check(rejoined: &Rejoined) -> Check {
    Check {
        what: "survivors back in discovery".into(),
        target: "all".into(),
        measured: match rejoined {
            Rejoined::All(n) => format!("all {n}"),
            Rejoined::Missing(m) => format!("missing: {}", m.join(", ")),
            Rejoined::NotChecked => "not checked (etcd down)".into(),
        },
        pass: !matches!(rejoined, Rejoined::Missing(_)),
    }
}

/// How long after a rollback the replicas may still answer from the canary: one
/// stage poll (1 s) and the second the rollback lands in.
const ROLLBACK_GRACE_S: f64 = 2.0;

/// A bad canary must be rolled back (by the rollout leader, within the recovery
/// bound) and every answer after it must come from production: a canary whose
/// answers carry no model (NaN scores degrade to retrieval order) cannot pass by
/// never being counted as a wrong version.
fn canary_checks(f: &Injected, load: &Load, slo: &Slo) -> [Check; 2] {
    let production = f.production_model.as_deref().unwrap_or_default();
    let rolled_back = Check {
        what: "canary rolled back".into(),
        target: format!("<= {} s", slo.recover_within_s),
        measured: f
            .rolled_back_after_s
            .map_or_else(|| "never".into(), |s| format!("{s:.1} s after the fault")),
        pass: f
            .rolled_back_after_s
            .is_some_and(|s| s <= slo.recover_within_s),
    };
    let after = f.rolled_back_after_s.map(|s| f.at_s + s + ROLLBACK_GRACE_S);
    let (mut answers, mut from_production) = (0, 0);
    for s in &load.timeline {
        if after.is_some_and(|t| s.second as f64 >= t) {
            answers += s.requests - s.errors;
            from_production += s.models.get(production).copied().unwrap_or(0);
        }
    }
    let from_production_check = Check {
        what: "after rollback".into(),
        target: format!("all from {production}"),
        measured: match after {
            None => "no rollback".into(),
            Some(_) if answers == 0 => "no answers after the rollback".into(),
            Some(_) => format!("{from_production} of {answers}"),
        },
        pass: answers > 0 && from_production == answers,
    };
    [rolled_back, from_production_check]
}

/// A rollout must complete under load, and switch at one instant: once an answer
/// came from the new version, none comes from the old (a drill mesh has one
/// embedding replica; the second of the switch itself may hold both).
fn rollout_checks(f: &Injected, r: &Rollout, load: &Load) -> [Check; 2] {
    let first = load
        .timeline
        .iter()
        .find(|s| s.models.get(&r.to).is_some_and(|n| *n > 0))
        .map(|s| s.second);
    let rolled_out = Check {
        what: "rolled out".into(),
        target: format!("answers from {} before the run ends", r.to),
        measured: first.map_or_else(
            || "never".into(),
            |s| format!("{:.0} s after the fault", (s as f64 - f.at_s).max(0.0)),
        ),
        pass: first.is_some(),
    };
    let late_old: u64 = first.map_or(0, |first| {
        load.timeline
            .iter()
            .filter(|s| s.second > first)
            .map(|s| s.models.get(&r.from).copied().unwrap_or(0))
            .sum()
    });
    let one_instant = Check {
        what: "switched at one instant".into(),
        target: format!("no answer from {} after the first from {}", r.from, r.to),
        measured: match first {
            None => "no switch".into(),
            Some(_) => format!("{late_old} from {} after it", r.from),
        },
        pass: first.is_some() && late_old == 0,
    };
    [rolled_out, one_instant]
}

/// The summary table for the terminal.
pub fn summary(r: &DrillReport) -> String {
    let mut out = format!(
        "drill {}: {}\n",
        r.name,
        if r.pass { "PASS" } else { "FAIL" }
    );
    for f in &r.faults {
        let _ = writeln!(
            out,
            "  fault at {:>5.1} s  {:<16} {}  recovered {}",
            f.at_s,
            f.kind,
            f.detail,
            f.recovered_after_s
                .map_or("never".into(), |s| format!("after {s:.1} s"))
        );
    }
    let _ = writeln!(
        out,
        "  {:<26} {:<16} {:<32} result",
        "check", "target", "measured"
    );
    for c in &r.checks {
        let _ = writeln!(
            out,
            "  {:<26} {:<16} {:<32} {}",
            c.what,
            c.target,
            c.measured,
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One timeline chart: `series` of (label, color, values per second), with fault
/// markers.
fn chart(
    title: &str,
    unit: &str,
    seconds: u64,
    series: &[(&str, &str, Vec<f64>)],
    faults: &[Injected],
) -> String {
    let (w, h, pad) = (720.0, 180.0, 40.0);
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(1.0_f64, f64::max)
        * 1.1;
    let n = seconds.max(1) as f64;
    let x = |s: f64| pad + s / n * (w - 2.0 * pad);
    let y = |v: f64| h - pad + -(v / max) * (h - 2.0 * pad);
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" role="img"><title>{}</title>"#,
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{pad}" y="{pad}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        w - 2.0 * pad,
        h - 2.0 * pad
    );
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="{}" font-size="12">{} ({unit}, max {:.1})</text>"##,
        pad - 8.0,
        escape(title),
        max / 1.1
    );
    for f in faults {
        let fx = x(f.at_s);
        let _ = write!(
            svg,
            r##"<line x1="{fx}" y1="{pad}" x2="{fx}" y2="{}" stroke="#d33" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="10" fill="#d33">{}</text>"##,
            h - pad,
            fx + 3.0,
            pad + 12.0,
            escape(&f.kind)
        );
    }
    for (i, (label, color, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(s, v)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{color}">{}</text>"#,
            points.join(" "),
            w - pad - 150.0 + 75.0 * (i % 2) as f64,
            h - 10.0,
            escape(label)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{pad}" y="{}" font-size="10">0 s</text><text x="{}" y="{}" font-size="10">{seconds} s</text></svg>"#,
        h - pad + 14.0,
        w - pad - 20.0,
        h - pad + 14.0
    );
    svg
}

/// One value per second of the load, 0 for a second without answers.
fn per_second(r: &DrillReport, f: impl Fn(&rankmesh_loadgen::Second) -> f64) -> Vec<f64> {
    let seconds = r.load.duration_s.ceil() as u64;
    (0..seconds)
        .map(|s| {
            r.load
                .timeline
                .iter()
                .find(|x| x.second == s)
                .map_or(0.0, &f)
        })
        .collect()
}

/// The three timelines: requests and errors, latency, answers per model version.
fn charts(r: &DrillReport) -> String {
    let seconds = r.load.duration_s.ceil() as u64;
    let throughput = chart(
        "requests and errors per second",
        "per s",
        seconds,
        &[
            ("requests", "#2a6", per_second(r, |s| s.requests as f64)),
            ("errors", "#d33", per_second(r, |s| s.errors as f64)),
        ],
        &r.faults,
    );
    let latency = chart(
        "latency per second",
        "ms",
        seconds,
        &[
            ("p50", "#36c", per_second(r, |s| s.p50_ms)),
            ("p99", "#c63", per_second(r, |s| s.p99_ms)),
        ],
        &r.faults,
    );
    let mut models: Vec<&String> = r
        .load
        .timeline
        .iter()
        .flat_map(|s| s.models.keys())
        .collect();
    models.sort();
    models.dedup();
    let colors = ["#555", "#2a6", "#c63", "#36c", "#a3a", "#d33"];
    let model_series: Vec<(&str, &str, Vec<f64>)> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let answers = per_second(r, |s| s.models.get(*m).copied().unwrap_or(0) as f64);
            (m.as_str(), colors[i % colors.len()], answers)
        })
        .collect();
    let versions = chart(
        "answers per model version per second",
        "per s",
        seconds,
        &model_series,
        &r.faults,
    );
    format!("{throughput}{latency}{versions}")
}

/// The SLO table's rows.
fn check_rows(r: &DrillReport) -> String {
    let mut rows = String::new();
    for c in &r.checks {
        let _ = write!(
            rows,
            r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            if c.pass { "pass" } else { "fail" },
            escape(&c.what),
            escape(&c.target),
            escape(&c.measured),
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    rows
}

/// The fault table's rows.
fn fault_rows(r: &DrillReport) -> String {
    let mut faults = String::new();
    for f in &r.faults {
        let _ = write!(
            faults,
            "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.at_s,
            escape(&f.kind),
            escape(&f.detail),
            f.recovered_after_s
                .map_or("never".into(), |s| format!("{s:.1} s"))
        );
    }
    faults
}

/// Errors by code, with an example message each; "none" without errors.
fn error_lines(r: &DrillReport) -> String {
    let errors: Vec<String> = r
        .load
        .errors
        .iter()
        .map(|(code, n)| {
            let example = r.load.error_examples.get(code).map_or("", String::as_str);
            format!("{n} {code}: {}", escape(example))
        })
        .collect();
    if errors.is_empty() {
        "none".to_owned()
    } else {
        errors.join("<br>")
    }
}

/// The self-contained HTML page.
pub fn html(r: &DrillReport) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drill {name}: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 800px; color: #222; }}
h1 .pass, td.pass {{ color: #2a6; }} h1 .fail {{ color: #d33; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
tr.fail td {{ background: #fee; }} tr.pass td:last-child {{ color: #2a6; }} tr.fail td:last-child {{ color: #d33; font-weight: bold; }}
.hyp {{ background: #f4f4f4; padding: 0.8em; border-left: 4px solid #999; }}
</style></head><body>
<h1>drill {name}: <span class="{class}">{verdict}</span></h1>
<p class="hyp">{hypothesis}</p>
<p>Load: {rpc} at {qps} qps for {duration} s (open loop), {sent} sent, {failed} failed; client: {client}.</p>
<h2>SLO</h2><table><tr><th>check</th><th>target</th><th>measured</th><th>result</th></tr>{rows}</table>
<h2>Faults</h2><table><tr><th>at</th><th>kind</th><th>what</th><th>recovered after</th></tr>{faults}</table>
<h2>Timelines</h2>{charts}
<h2>Errors</h2><p>{errors}</p>
</body></html>
"#,
        name = escape(&r.name),
        verdict = if r.pass { "PASS" } else { "FAIL" },
        class = if r.pass { "pass" } else { "fail" },
        hypothesis = escape(&r.hypothesis),
        rpc = escape(&r.load.rpc),
        qps = r.load.qps,
        duration = r.load.duration_s,
        sent = r.load.sent,
        failed = r.load.failed,
        client = escape(&r.client),
        rows = check_rows(r),
        faults = fault_rows(r),
        charts = charts(r),
        errors = error_lines(r),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankmesh_loadgen::{Latency, Second};
    use std::collections::BTreeMap;

    fn second(s: u64, errors: u64, p99: f64) -> Second {
        Second {
            second: s,
            requests: 10,
            errors,
            errors_by_code: BTreeMap::new(),
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            models: BTreeMap::from([("ranker:1".to_owned(), 10 - errors)]),
            degraded: BTreeMap::new(),
        }
    }

    fn load(timeline: Vec<Second>) -> Load {
        let failed = timeline.iter().map(|s| s.errors).sum();
        Load {
            rpc: "search".into(),
            qps: 10.0,
            duration_s: timeline.len() as f64,
            sent: 10 * timeline.len() as u64,
            dropped: 0,
            failed,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            achieved_qps: 10.0,
            goodput_qps: 10.0 - failed as f64 / timeline.len() as f64,
            latency_ms: Latency {
                p50: 10.0,
                p90: 15.0,
                p99: 20.0,
                p999: 30.0,
                max: 40.0,
            },
            latency_by_outcome_ms: BTreeMap::new(),
            stages: BTreeMap::new(),
            timeline,
        }
    }

    #[test]
    fn recovery_runs_from_the_fault_to_the_last_bad_second() {
        let l = load(vec![
            second(0, 0, 20.0),
            second(1, 0, 20.0),
            second(2, 3, 20.0),
            second(3, 0, 900.0),
            second(4, 0, 20.0),
            second(5, 0, 20.0),
        ]);
        assert_eq!(recovery(&l, 2.0, 6.0, 100.0), Some(2.0));
        assert_eq!(recovery(&l, 4.0, 6.0, 100.0), Some(0.0));
        let never = load(vec![second(0, 0, 20.0), second(1, 1, 20.0)]);
        assert_eq!(recovery(&never, 0.5, 2.0, 100.0), None);
    }

    /// A fault injected a hair after a whole second (as a drill's scheduler does)
    /// owns that second: the errors it causes there are not the previous fault's.
    #[test]
    fn the_second_a_fault_starts_in_is_that_faults() {
        let l = load(vec![
            second(0, 0, 20.0),
            second(1, 0, 20.0),
            second(2, 0, 20.0),
            second(3, 1, 20.0),
            second(4, 0, 20.0),
            second(5, 0, 20.0),
        ]);
        let mut faults = vec![
            Injected::new("kill", 1.0),
            Injected::new("partition", 3.001),
        ];
        mark_recovery(&mut faults, &l, 100.0);
        assert_eq!(
            faults[0].recovered_after_s,
            Some(0.0),
            "the kill's seconds were clean"
        );
        let partition = faults[1]
            .recovered_after_s
            .expect("the partition recovered");
        assert!((partition - 0.999).abs() < 1e-9, "{partition}");
    }

    /// A second of a surge: `requests` sent, `refused` of them refused.
    fn surged(s: u64, requests: u64, refused: u64, other: u64) -> Second {
        Second {
            requests,
            errors: refused + other,
            errors_by_code: [(REFUSED, refused), ("DeadlineExceeded", other)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (c.to_owned(), n))
                .collect(),
            ..second(s, 0, 40.0)
        }
    }

    fn surge_judged(timeline: Vec<Second>, refusal_p99: f64) -> DrillReport {
        let slo = Slo {
            availability: 0.999,
            p99_ms: 100.0,
            recover_within_s: 2.0,
            wrong_version_answers: 0,
            lost_events: 0,
            overload: Some(crate::scenario::OverloadSlo {
                goodput_ratio: 0.9,
                refusal_p99_ms: 25.0,
                answered_p99_ms: 100.0,
            }),
        };
        let mut l = load(timeline);
        let latency = |p99| Latency {
            p50: p99 / 2.0,
            p90: p99,
            p99,
            p999: p99,
            max: p99,
        };
        l.latency_by_outcome_ms = BTreeMap::from([
            ("Ok".into(), latency(60.0)),
            (REFUSED.into(), latency(refusal_p99)),
        ]);
        judge(Inputs {
            name: "overload",
            hypothesis: "h",
            slo: &slo,
            faults: vec![Injected {
                ends_at_s: Some(4.0),
                ..Injected::new("surge", 1.0)
            }],
            load: l,
            events: None,
            rejoined: Rejoined::All(5),
            client: "SDK".into(),
        })
    }

    fn failed(r: &DrillReport) -> Vec<&str> {
        r.checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.what.as_str())
            .collect()
    }

    #[test]
    fn a_surge_is_judged_on_goodput_fast_refusals_and_recovery_from_its_end() {
        // 10 qps, then 30 qps for 3 s: about 10 answered a second, the rest refused.
        let graceful = surge_judged(
            vec![
                second(0, 0, 20.0),
                surged(1, 30, 20, 0),
                surged(2, 30, 21, 0),
                surged(3, 30, 19, 0),
                second(4, 0, 20.0),
                second(5, 0, 20.0),
            ],
            12.0,
        );
        assert!(graceful.pass, "{:?}", graceful.checks);
        assert_eq!(
            graceful.requests_lost, 0,
            "refusals in the surge are not lost"
        );
        assert_eq!(graceful.faults[0].recovered_after_s, Some(0.0));

        // Collapse: timeouts instead of refusals, goodput gone, slow to recover.
        let collapsed = surge_judged(
            vec![
                second(0, 0, 20.0),
                surged(1, 30, 0, 25),
                surged(2, 30, 0, 28),
                surged(3, 30, 0, 30),
                surged(4, 10, 0, 6),
                surged(5, 10, 0, 2),
            ],
            0.0,
        );
        assert_eq!(
            failed(&collapsed),
            [
                "availability",
                "time to recover",
                "overloaded",
                "goodput in the surge"
            ]
        );

        // Refusals that take long, and none at all (the surge never overloaded).
        let steady_surge = |refused| {
            vec![
                second(0, 0, 20.0),
                surged(1, 30, refused, 0),
                surged(2, 30, refused, 0),
                surged(3, 30, refused, 0),
                second(4, 0, 20.0),
            ]
        };
        let slow = surge_judged(steady_surge(20), 80.0);
        assert_eq!(failed(&slow), ["refusal p99"]);
        let idle = surge_judged(steady_surge(0), 0.0);
        assert_eq!(failed(&idle), ["overloaded"]);
    }

    #[test]
    fn a_missed_slo_fails_the_drill_and_the_page_says_why() {
        let slo = Slo {
            availability: 0.999,
            p99_ms: 100.0,
            recover_within_s: 5.0,
            wrong_version_answers: 0,
            lost_events: 0,
            overload: None,
        };
        let r = judge(Inputs {
            name: "t",
            hypothesis: "h",
            slo: &slo,
            faults: vec![Injected {
                detail: "ranking-1".into(),
                forbidden_model: Some("ranker:1".into()),
                ..Injected::new("stop", 1.0)
            }],
            load: load(vec![
                second(0, 0, 20.0),
                second(1, 2, 20.0),
                second(2, 0, 20.0),
            ]),
            events: Some(Events::default()),
            rejoined: Rejoined::Missing(vec!["ranking-1".into()]),
            client: "hedging, retries".into(),
        });
        assert!(!r.pass);
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.what.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "availability",
                "wrong-version answers",
                "acknowledged events lost",
                "survivors back in discovery"
            ]
        );
        assert_eq!(r.faults[0].recovered_after_s, Some(1.0));
        let page = html(&r);
        assert!(page.contains("<svg") && page.contains("FAIL") && page.contains("stop"));
        assert!(summary(&r).contains("availability"));
    }

    #[test]
    fn a_canary_passes_only_when_rolled_back_in_time_and_production_answers_after() {
        let slo = Slo {
            availability: 0.9,
            p99_ms: 100.0,
            recover_within_s: 3.0,
            wrong_version_answers: 0,
            lost_events: 0,
            overload: None,
        };
        let canary = |rolled_back_after_s| Injected {
            forbidden_model: Some("ranker:2".into()),
            production_model: Some("ranker:1".into()),
            rolled_back_after_s,
            ..Injected::new("canary", 1.0)
        };
        // Seconds 0..8 answered by production (the `second` helper's ranker:1).
        let served = load((0..8).map(|s| second(s, 0, 20.0)).collect());
        let verdict = |f: Injected, l: &Load| {
            canary_checks(&f, l, &slo).map(|c| (c.what, c.pass, c.measured))
        };
        let ok = verdict(canary(Some(2.0)), &served);
        assert!(ok.iter().all(|(_, pass, _)| *pass), "{ok:?}");
        assert_eq!(
            ok[1].2, "30 of 30",
            "seconds 5, 6, 7 (rollback at 3 s + 2 s grace)"
        );
        // Never rolled back, or too late: the first check fails.
        let never = verdict(canary(None), &served);
        assert_eq!((never[0].1, never[1].1), (false, false), "{never:?}");
        assert!(!verdict(canary(Some(4.0)), &served)[0].1);
        // NaN canary answers carry no ranker: after the rollback they must.
        let mut degraded = served.clone();
        degraded.timeline[6].models.clear();
        let nan = verdict(canary(Some(2.0)), &degraded);
        assert_eq!(
            (nan[1].1, nan[1].2.as_str()),
            (false, "20 of 30"),
            "{nan:?}"
        );
    }
}
