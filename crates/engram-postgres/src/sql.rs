//! The filter language compiled to a parameterised SQL predicate.
//!
//! Every value from a request becomes a bind parameter (`$n` with an explicit
//! cast); only fixed column names and operators are written into the SQL text.
//!
//! NULLs: outside any `NOT`, a condition on a missing field may be NULL — in
//! a WHERE clause, through `AND` and `OR`, NULL excludes the row exactly as
//! FALSE would, and the plain form (`user_id = ANY($1)`) lets the planner use
//! the scope indexes. Under a `NOT` each condition is wrapped in
//! `COALESCE(…, FALSE)`, so negation behaves exactly like [`Filter::matches`]
//! on a record, missing fields included.

use engram_core::filter::{Cmp, Cond, Filter, StrOp, TimeField, ValueOp};
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// Bind parameters collected while SQL text is written.
#[derive(Default)]
pub struct Params {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Params {
    /// Adds a value and returns its placeholder (`$n`).
    pub fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(v));
        format!("${}", self.values.len())
    }

    /// The values in placeholder order, as `tokio_postgres` takes them.
    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The predicate "current version, not expired at `now_ms`" on table alias `t` (`""` for none).
pub fn live(t: &str, p: &mut Params, now_ms: i64) -> String {
    let now = p.push(now_ms);
    format!("{t}invalid_at IS NULL AND ({t}expires_at IS NULL OR {t}expires_at > {now}::bigint)")
}

/// Compiles `filter` over the columns of `memories` under alias `t`
/// (`""`, or `"n."` for a table aliased `n`).
pub fn compile(filter: &Filter, t: &str, p: &mut Params) -> String {
    compile_in(filter, t, p, false)
}

fn compile_in(filter: &Filter, t: &str, p: &mut Params, negated: bool) -> String {
    match filter {
        Filter::And(children) if children.is_empty() => "TRUE".into(),
        Filter::Or(children) if children.is_empty() => "FALSE".into(),
        Filter::And(children) => join(children, " AND ", t, p, negated),
        Filter::Or(children) => join(children, " OR ", t, p, negated),
        Filter::Not(inner) => format!("(NOT {})", compile_in(inner, t, p, true)),
        Filter::Cond(cond) => {
            let c = condition(cond, t, p);
            if negated {
                format!("COALESCE({c}, FALSE)")
            } else {
                c
            }
        }
    }
}

fn join(children: &[Filter], op: &str, t: &str, p: &mut Params, negated: bool) -> String {
    let parts: Vec<String> = children
        .iter()
        .map(|c| compile_in(c, t, p, negated))
        .collect();
    format!("({})", parts.join(op))
}

fn operator(cmp: Cmp) -> &'static str {
    match cmp {
        Cmp::Eq => "=",
        Cmp::Ne => "<>",
        Cmp::Gt => ">",
        Cmp::Gte => ">=",
        Cmp::Lt => "<",
        Cmp::Lte => "<=",
    }
}

fn condition(cond: &Cond, t: &str, p: &mut Params) -> String {
    match cond {
        Cond::Scope { field, op } => {
            let col = format!("{t}{}", field.as_str());
            match op {
                StrOp::In(values) => {
                    format!("({col} = ANY({}::text[]))", p.push(values.clone()))
                }
                StrOp::NotIn(values) => format!(
                    "(NOT COALESCE({col} = ANY({}::text[]), FALSE))",
                    p.push(values.clone())
                ),
                StrOp::Exists => format!("({col} IS NOT NULL)"),
            }
        }
        Cond::Time { field, cmp, at } => {
            let col = match field {
                TimeField::CreatedAt => "created_at",
                TimeField::UpdatedAt => "updated_at",
            };
            format!(
                "({t}{col} {} {}::bigint)",
                operator(*cmp),
                p.push(at.as_millisecond())
            )
        }
        Cond::Kind(kinds, negate) => {
            let names: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
            let test = format!("({t}kind = ANY({}::text[]))", p.push(names));
            negated(test, *negate)
        }
        Cond::Categories(wanted, negate) => {
            let wanted: Vec<String> = wanted.iter().map(|w| w.to_ascii_lowercase()).collect();
            let test = format!(
                "(EXISTS (SELECT 1 FROM jsonb_array_elements_text({t}categories) AS c(v) \
                 WHERE lower(c.v) = ANY({}::text[])))",
                p.push(wanted)
            );
            negated(test, *negate)
        }
        Cond::Metadata { key, op } => metadata(key, op, t, p),
        Cond::Keywords {
            needle,
            case_insensitive,
        } => {
            let n = p.push(needle.clone());
            if *case_insensitive {
                format!("(strpos(lower({t}text), lower({n}::text)) > 0)")
            } else {
                format!("(strpos({t}text, {n}::text) > 0)")
            }
        }
    }
}

fn negated(test: String, negate: bool) -> String {
    if negate {
        format!("(NOT {test})")
    } else {
        test
    }
}

fn metadata(key: &str, op: &ValueOp, t: &str, p: &mut Params) -> String {
    let k = p.push(key.to_owned());
    let v = format!("({t}meta -> {k}::text)");
    let s = format!("({t}meta ->> {k}::text)");
    match op {
        ValueOp::Exists => format!("COALESCE(jsonb_typeof({v}) <> 'null', FALSE)"),
        ValueOp::In(values) => format!(
            "COALESCE({v} = ANY({}::jsonb[]), FALSE)",
            p.push(values.clone())
        ),
        ValueOp::NotIn(values) => format!(
            "(NOT COALESCE({v} = ANY({}::jsonb[]), FALSE))",
            p.push(values.clone())
        ),
        ValueOp::Cmp(cmp, x) => match x {
            Value::Number(n) => match n.as_f64() {
                Some(n) => format!(
                    "COALESCE(CASE WHEN jsonb_typeof({v}) = 'number' THEN {s}::float8 {} {}::float8 END, FALSE)",
                    operator(*cmp),
                    p.push(n)
                ),
                None => "FALSE".into(),
            },
            Value::String(x) => format!(
                "COALESCE(CASE WHEN jsonb_typeof({v}) = 'string' THEN {s} COLLATE \"C\" {} {}::text END, FALSE)",
                operator(*cmp),
                p.push(x.clone())
            ),
            // Only numbers compare with numbers and strings with strings.
            _ => "FALSE".into(),
        },
        ValueOp::Contains {
            needle,
            case_insensitive,
        } => {
            let n = p.push(needle.clone());
            let (lhs_s, lhs_e, rhs) = if *case_insensitive {
                (
                    format!("lower({s})"),
                    "lower(e.v #>> '{}')".to_owned(),
                    format!("lower({n}::text)"),
                )
            } else {
                (s.clone(), "(e.v #>> '{}')".to_owned(), format!("{n}::text"))
            };
            format!(
                "COALESCE(CASE jsonb_typeof({v}) \
                 WHEN 'string' THEN strpos({lhs_s}, {rhs}) > 0 \
                 WHEN 'array' THEN EXISTS (SELECT 1 FROM jsonb_array_elements({v}) AS e(v) \
                   WHERE jsonb_typeof(e.v) = 'string' AND {lhs_e} = {rhs}) \
                 ELSE FALSE END, FALSE)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sql(v: Value) -> (String, usize) {
        let mut p = Params::default();
        let f = Filter::parse(&v).expect("valid filter");
        let s = compile(&f, "", &mut p);
        (s, p.refs().len())
    }

    #[test]
    fn values_are_parameters_never_text() {
        let evil = "x'); DROP TABLE memories; --";
        let (s, n) = sql(json!({"AND": [
            {"user_id": evil},
            {"metadata": {evil: {"contains": evil}}},
            {"keywords": {"icontains": evil}},
            {"categories": {"in": [evil]}},
        ]}));
        assert!(!s.contains("DROP"), "{s}");
        assert!(n >= 5, "{n} parameters");
    }

    #[test]
    fn empty_and_or_match_like_the_evaluator() {
        assert_eq!(sql(json!({})).0, "TRUE");
        let mut p = Params::default();
        assert_eq!(compile(&Filter::Or(Vec::new()), "", &mut p), "FALSE");
        let (s, _) = sql(json!({"NOT": {"user_id": "a"}}));
        assert_eq!(s, "(NOT COALESCE((user_id = ANY($1::text[])), FALSE))");
        let (s, _) = sql(json!({"user_id": "a"}));
        assert_eq!(
            s, "(user_id = ANY($1::text[]))",
            "index-friendly outside NOT"
        );
    }
}
