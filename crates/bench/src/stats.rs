//! Latency histograms and the one-line JSON summary.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::util::us_to_ms;

/// Latencies in microseconds, from 1 µs to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Adds `<prefix>_p50_ms`, `_p90_ms`, `_p99_ms`, `_p999_ms`, `_max_ms`, `_mean_ms` and `_samples`
/// (null percentiles when there are no samples).
pub fn latency_fields(out: &mut Map<String, Value>, prefix: &str, h: &Histogram<u64>) {
    let empty = h.is_empty();
    let q = |quantile: f64| -> Value {
        if empty {
            Value::Null
        } else {
            json!(us_to_ms(h.value_at_quantile(quantile)))
        }
    };
    out.insert(format!("{prefix}_p50_ms"), q(0.5));
    out.insert(format!("{prefix}_p90_ms"), q(0.9));
    out.insert(format!("{prefix}_p99_ms"), q(0.99));
    out.insert(format!("{prefix}_p999_ms"), q(0.999));
    out.insert(
        format!("{prefix}_max_ms"),
        if empty { Value::Null } else { json!(us_to_ms(h.max())) },
    );
    out.insert(
        format!("{prefix}_mean_ms"),
        if empty {
            Value::Null
        } else {
            json!((h.mean()).round() / 1000.0)
        },
    );
    out.insert(format!("{prefix}_samples"), json!(h.len()));
}

/// The final stdout line: `{"benchmark":…,"ok":…,…fields}` on one line.
pub fn summary_line(benchmark: &str, ok: bool, error: Option<&str>, fields: Map<String, Value>) -> String {
    let mut m = Map::new();
    m.insert("benchmark".into(), json!(benchmark));
    m.insert("ok".into(), json!(ok));
    if let Some(e) = error {
        m.insert("error".into(), json!(e));
    }
    m.extend(fields);
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_fields_from_a_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let mut m = Map::new();
        latency_fields(&mut m, "latency", &h);
        let p50 = m["latency_p50_ms"].as_f64().unwrap();
        let p99 = m["latency_p99_ms"].as_f64().unwrap();
        let max = m["latency_max_ms"].as_f64().unwrap();
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        assert!((989.0..=991.0).contains(&p99), "{p99}");
        assert!((999.0..=1001.0).contains(&max), "{max}");
        assert_eq!(m["latency_samples"], 1000);
        assert!(m.contains_key("latency_p999_ms"));
    }

    #[test]
    fn empty_histograms_give_nulls() {
        let mut m = Map::new();
        latency_fields(&mut m, "ack_latency", &new_histogram());
        assert!(m["ack_latency_p50_ms"].is_null());
        assert!(m["ack_latency_max_ms"].is_null());
        assert_eq!(m["ack_latency_samples"], 0);
    }

    #[test]
    fn summary_is_one_json_line() {
        let mut f = Map::new();
        f.insert("deliveries_per_sec".into(), json!(1234.5));
        f.insert("note".into(), json!("two\nlines"));
        let line = summary_line("fanout", true, None, f);
        assert!(!line.contains('\n'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["benchmark"], "fanout");
        assert_eq!(v["ok"], true);
        assert_eq!(v["deliveries_per_sec"], 1234.5);
        assert!(v.get("error").is_none());
        let failed: Value = serde_json::from_str(&summary_line("send", false, Some("boom"), Map::new())).unwrap();
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"], "boom");
    }
}
