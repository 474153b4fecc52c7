//! Form parameters as NIM's SDKs send them: `application/x-www-form-urlencoded` (with or without a
//! charset), names matched case-insensitively (`pushcontent` and `pushContent` are one parameter), unknown
//! names ignored. JSON-valued parameters also accept the single-quoted pseudo-JSON of Python's `str(dict)`,
//! which NetEase's own MCP server sends.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{NimError, NimResult};

pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(body: &[u8]) -> NimResult<Params> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| NimError::param(format!("unreadable form body: {e}")))?;
        Ok(Params(
            pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
        ))
    }

    /// A parameter if present (empty strings count as absent: NIM's SDKs send empty optional fields).
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn req(&self, name: &str) -> NimResult<&str> {
        self.opt(name).ok_or_else(|| NimError::missing(name))
    }

    pub fn int(&self, name: &str) -> NimResult<Option<i64>> {
        self.opt(name)
            .map(|v| v.trim().parse().map_err(|_| NimError::invalid(name, "not an integer")))
            .transpose()
    }

    pub fn req_int(&self, name: &str) -> NimResult<i64> {
        self.int(name)?.ok_or_else(|| NimError::missing(name))
    }

    /// `true`/`false` (any case) or `1`/`0`.
    pub fn bool(&self, name: &str) -> NimResult<Option<bool>> {
        self.opt(name)
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(NimError::invalid(name, "not a boolean")),
            })
            .transpose()
    }

    pub fn json(&self, name: &str) -> NimResult<Option<Value>> {
        self.opt(name)
            .map(|v| lenient_json(v).map_err(|e| NimError::invalid(name, format!("not JSON ({e})"))))
            .transpose()
    }

    /// A JSON array of strings (`["a","b"]`), at most `max` of them.
    pub fn string_list(&self, name: &str, max: usize) -> NimResult<Option<Vec<String>>> {
        let Some(v) = self.json(name)? else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(NimError::invalid(name, "must be a JSON array"));
        };
        if items.len() > max {
            return Err(NimError::invalid(name, format!("at most {max} entries")));
        }
        items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(NimError::invalid(name, "entries must be strings")),
            })
            .collect::<NimResult<Vec<_>>>()
            .map(Some)
    }
}

/// Parses JSON; failing that, Python-literal style: single-quoted strings and `True`/`False`/`None`.
pub fn lenient_json(s: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(s).or_else(|e| serde_json::from_str(&python_literal_to_json(s)).map_err(|_| e))
}

fn python_literal_to_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A JSON string: copied as is.
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                out.push(n);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(n) => {
                                out.push('\\');
                                out.push(n);
                            }
                            None => {}
                        },
                        '\'' => break,
                        '"' => out.push_str("\\\""),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            c if c.is_ascii_alphabetic() => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        word.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_case_insensitive_and_the_seed_body_parses() {
        let p = Params::parse(
            br#"from=zhangsan&ope=0&to=list&type=0&body={"msg":"hello"}&robotAccount=robot&pushContent="#,
        )
        .unwrap();
        assert_eq!(p.opt("robotaccount"), Some("robot"));
        assert_eq!(p.opt("ROBOTACCOUNT"), Some("robot"));
        assert_eq!(p.json("body").unwrap(), Some(json!({"msg": "hello"})));
        assert_eq!(p.opt("pushcontent"), None, "empty means absent");
        assert_eq!(p.req_int("ope").unwrap(), 0);
        assert_eq!(p.req("missing").unwrap_err().code, 414);
        assert!(p.int("from").is_err());
    }

    #[test]
    fn python_literals_are_read_as_json() {
        assert_eq!(lenient_json("{'msg': 'hello'}").unwrap(), json!({"msg": "hello"}));
        assert_eq!(
            lenient_json(r#"{'msg': 'it\'s "quoted"', 'ok': True, 'n': None, "k": 'v'}"#).unwrap(),
            json!({"msg": "it's \"quoted\"", "ok": true, "n": null, "k": "v"})
        );
        assert_eq!(lenient_json(r#"{"msg": "don't"}"#).unwrap(), json!({"msg": "don't"}));
        assert!(lenient_json("{'msg': }").is_err());
    }

    #[test]
    fn lists_are_json_arrays_with_a_bound() {
        let p = Params::parse(b"accids=%5B%22a%22%2C%22b%22%5D&bad=x&many=%5B1%2C2%2C3%5D").unwrap();
        assert_eq!(p.string_list("accids", 10).unwrap().unwrap(), ["a", "b"]);
        assert!(p.string_list("bad", 10).is_err());
        assert!(p.string_list("many", 2).is_err());
        assert_eq!(p.string_list("absent", 2).unwrap(), None);
    }
}
