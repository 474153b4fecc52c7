//! A small PromQL tokenizer for the dashboard test: what each panel's expression reads, and what its
//! structure must be.

use super::INSTANCE;

/// A metric an expression reads.
#[derive(Debug, PartialEq)]
pub(super) struct Read {
    pub(super) metric: String,
    /// The label matchers between its braces (empty without).
    pub(super) matchers: String,
    /// The functions and aggregations around it, outermost first (empty for bare parentheses).
    pub(super) within: Vec<String>,
}

impl Read {
    pub(super) fn directly_in(&self) -> &str {
        self.within.last().map(String::as_str).unwrap_or_default()
    }
}

/// What an expression reads, with the labels of its grouping clauses.
#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) reads: Vec<Read>,
    /// The labels of every `by`, `without`, `on`, `ignoring` and `group_left/right` clause.
    pub(super) grouping: Vec<String>,
}

pub(super) const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
pub(super) const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
pub(super) const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];
pub(super) const RATES: &[&str] = &["rate", "irate", "increase"];

pub(super) fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

pub(super) fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

pub(super) fn skip_ws(c: &[char], mut i: usize) -> usize {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    i
}

/// `c[i]` opens a string: the index after it.
pub(super) fn skip_string(c: &[char], mut i: usize) -> Result<usize, String> {
    let quote = c[i];
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' if quote != '`' => i += 2,
            ch if ch == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err("an unterminated string".into())
}

/// `c[i]` is `open`: the index after its match (strings inside skipped).
pub(super) fn skip_group(c: &[char], mut i: usize, open: char, close: char) -> Result<usize, String> {
    let mut depth = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                i = skip_string(c, i)?;
                continue;
            }
            ch if ch == open => depth += 1,
            ch if ch == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("an unclosed {open}"))
}

/// A small PromQL tokenizer, enough to tell what an expression reads: strings, label matchers, range and
/// subquery brackets, numbers and durations, `$variables`, function calls, aggregations with their grouping
/// clause before or after the parenthesis, keywords and operators. A name that is none of those is a metric.
pub(super) fn parse_promql(expr: &str) -> Result<Query, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut stack: Vec<String> = Vec::new();
    // An aggregation whose parenthesis comes after its grouping clause (`sum by (le) (...)`).
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match ch {
            _ if ch.is_whitespace() => i += 1,
            '"' | '\'' | '`' => i = skip_string(&c, i)?,
            '[' => i = skip_group(&c, i, '[', ']')?,
            '{' => return Err(format!("a selector without a metric name at {i}")),
            '(' => {
                stack.push(pending.take().unwrap_or_default());
                i += 1;
            }
            ')' => {
                stack.pop().ok_or("an unbalanced )")?;
                i += 1;
            }
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = skip_group(&c, i, '{', '}')?;
                } else {
                    while i < c.len() && is_ident(c[i]) {
                        i += 1;
                    }
                }
            }
            _ if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                    i += 1;
                }
            }
            _ if is_ident_start(ch) => {
                let start = i;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let j = skip_ws(&c, i);
                let next = c.get(j).copied();
                if GROUPING.contains(&word.as_str()) {
                    if next == Some('(') {
                        let end = skip_group(&c, j, '(', ')')?;
                        let labels: String = c[j + 1..end - 1].iter().collect();
                        q.grouping.extend(
                            labels
                                .split(',')
                                .map(|l| l.trim().to_string())
                                .filter(|l| !l.is_empty()),
                        );
                        i = end;
                    }
                } else if next == Some('(') {
                    stack.push(word);
                    i = j + 1;
                } else if AGGREGATIONS.contains(&word.as_str()) {
                    pending = Some(word);
                } else if KEYWORDS.contains(&word.as_str()) {
                    // An operator or a literal.
                } else {
                    let (matchers, end) = match next {
                        Some('{') => {
                            let end = skip_group(&c, j, '{', '}')?;
                            (c[j + 1..end - 1].iter().collect(), end)
                        }
                        _ => (String::new(), i),
                    };
                    q.reads.push(Read {
                        metric: word,
                        matchers,
                        within: stack.clone(),
                    });
                    i = end;
                }
            }
            _ => i += 1, // operators, commas
        }
    }
    if !stack.is_empty() {
        return Err("an unclosed (".into());
    }
    Ok(q)
}

/// What the structure of a query must be, whatever the server exposes: every selector filtered by the
/// `instance` variable, counters and histogram series read through `rate`/`increase`, buckets only through
/// `histogram_quantile` grouped by `le`.
pub(super) fn query_problems(panel: &str, expr: &str) -> Vec<String> {
    let q = match parse_promql(expr) {
        Ok(q) => q,
        Err(e) => return vec![format!("panel {panel:?}: cannot parse {expr:?}: {e}")],
    };
    let mut problems = Vec::new();
    if q.reads.is_empty() {
        problems.push(format!("panel {panel:?}: {expr:?} reads no metric"));
    }
    let quantile = expr.contains("histogram_quantile(");
    for r in &q.reads {
        let m = &r.metric;
        if !m.starts_with("confab_") {
            problems.push(format!("panel {panel:?}: {m} is not a Confab metric"));
        }
        if !r.matchers.contains(INSTANCE) {
            problems.push(format!("panel {panel:?}: {m} is not filtered by {INSTANCE}"));
        }
        let cumulative = ["_total", "_bucket", "_sum", "_count"].iter().any(|s| m.ends_with(s));
        if cumulative && !RATES.contains(&r.directly_in()) {
            problems.push(format!(
                "panel {panel:?}: {m} is cumulative: read it through rate() or increase()"
            ));
        }
        if m.ends_with("_bucket")
            && !(r.within.iter().any(|f| f == "histogram_quantile") && q.grouping.iter().any(|l| l == "le"))
        {
            problems.push(format!(
                "panel {panel:?}: {m} belongs in histogram_quantile(…, sum by (le) (rate(…)))"
            ));
        }
        if quantile && !m.ends_with("_bucket") {
            problems.push(format!(
                "panel {panel:?}: histogram_quantile reads {m}, not a _bucket series"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_reads_are_told_from_functions_keywords_and_labels() {
        let q = parse_promql(
            r#"histogram_quantile(0.99, sum by (le, instance) (rate(confab_a_bucket{instance=~"$instance"}[$__rate_interval])))"#,
        )
        .unwrap();
        assert_eq!(
            q.reads,
            [Read {
                metric: "confab_a_bucket".into(),
                matchers: r#"instance=~"$instance""#.into(),
                within: vec!["histogram_quantile".into(), "sum".into(), "rate".into()],
            }]
        );
        assert_eq!(q.grouping, ["le", "instance"]);

        let q = parse_promql(
            r#"sum(rate(a_total{x="y}{", z!~'q'}[5m] offset 1h)) by (kind) / on (instance) group_left max without (job) (b) > bool 0.5"#,
        )
        .unwrap();
        let read: Vec<(&str, &str)> = q.reads.iter().map(|r| (r.metric.as_str(), r.directly_in())).collect();
        assert_eq!(read, [("a_total", "rate"), ("b", "max")]);
        assert_eq!(q.grouping, ["kind", "instance", "job"]);

        let q = parse_promql("sum(x_sum) / sum(x_count) and on() vector(1)").unwrap();
        let names: Vec<&str> = q.reads.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, ["x_sum", "x_count"]);

        assert!(parse_promql("sum(rate(x[5m])").is_err());
        assert!(parse_promql(r#"{__name__="x"}"#).is_err());
        assert!(parse_promql(r#"x{a="b}"#).is_err());

        let problems = query_problems("p", r#"sum(confab_x_total{instance=~"$instance"})"#);
        assert!(problems.iter().any(|p| p.contains("rate()")), "{problems:?}");
        let problems = query_problems(
            "p",
            r#"histogram_quantile(0.5, sum by (instance) (rate(confab_x_bucket[5m])))"#,
        );
        assert_eq!(problems.len(), 2, "no instance filter, no le: {problems:?}");
    }
}
