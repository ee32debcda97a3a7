//! Mem0's filter language, parsed into a typed AST.
//!
//! ```json
//! {"AND": [{"user_id": "alice"},
//!          {"OR": [{"categories": {"contains": "food"}},
//!                  {"metadata": {"city": {"in": ["Lisbon", "Porto"]}}}]},
//!          {"NOT": {"created_at": {"lt": "2024-01-01"}}}]}
//! ```
//!
//! An object with several keys is their conjunction. Fields: the scope ids
//! (`org_id`, `app_id`, `user_id`, `agent_id`, `run_id`), `created_at`,
//! `updated_at`, `kind`, `categories`, `metadata` (per key) and `keywords`
//! (text contains). Operators: a bare value (equals), `eq`, `ne`, `in`, `nin`,
//! `gt`, `gte`, `lt`, `lte`, `contains`, `icontains`, and the wildcard `"*"`
//! (the field is set). Parsing rejects anything else with a message that says
//! where and why.

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::memory::{Memory, MemoryKind, Metadata, Scope, ScopeField};
use crate::{Error, Result};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every child matches (an empty list matches everything).
    And(Vec<Filter>),
    /// At least one child matches.
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Cond),
}

/// One condition on one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Scope {
        field: ScopeField,
        op: StrOp,
    },
    Time {
        field: TimeField,
        cmp: Cmp,
        at: Timestamp,
    },
    Kind(Vec<MemoryKind>, bool),
    /// The memory has at least one of these categories (`contains` is the one-element case).
    Categories(Vec<String>, bool),
    Metadata {
        key: String,
        op: ValueOp,
    },
    Keywords {
        needle: String,
        case_insensitive: bool,
    },
}

/// Operators on string-valued fields.
#[derive(Debug, Clone, PartialEq)]
pub enum StrOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    /// The field is set (`"*"`).
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeField {
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Eq => ord == Equal,
            Cmp::Ne => ord != Equal,
            Cmp::Gt => ord == Greater,
            Cmp::Gte => ord != Less,
            Cmp::Lt => ord == Less,
            Cmp::Lte => ord != Greater,
        }
    }
}

/// Operators on metadata values.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueOp {
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Cmp(Cmp, Value),
    Contains {
        needle: String,
        case_insensitive: bool,
    },
    Exists,
}

/// What a filter is evaluated against.
pub trait Filterable {
    fn scope_id(&self, field: ScopeField) -> Option<&str>;
    fn time(&self, field: TimeField) -> Timestamp;
    fn kind(&self) -> MemoryKind;
    fn categories(&self) -> &[String];
    fn metadata(&self) -> &Metadata;
    fn text(&self) -> &str;
}

impl Filterable for Memory {
    fn scope_id(&self, field: ScopeField) -> Option<&str> {
        self.scope.get(field)
    }
    fn time(&self, field: TimeField) -> Timestamp {
        match field {
            TimeField::CreatedAt => self.created_at,
            TimeField::UpdatedAt => self.updated_at,
        }
    }
    fn kind(&self) -> MemoryKind {
        self.kind
    }
    fn categories(&self) -> &[String] {
        &self.categories
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn text(&self) -> &str {
        &self.text
    }
}

/// Longest metadata key accepted in a filter.
const MAX_KEY_LEN: usize = 128;
/// Deepest nesting of AND/OR/NOT accepted.
const MAX_DEPTH: usize = 16;
/// Most values in one `in` / `nin` list, and most filters in one AND/OR list.
const MAX_LIST: usize = 256;

impl Filter {
    /// Matches everything.
    pub fn all() -> Filter {
        Filter::And(Vec::new())
    }

    /// The conjunction of the ids set in `scope`.
    pub fn from_scope(scope: &Scope) -> Filter {
        Filter::And(
            scope
                .iter()
                .map(|(field, v)| {
                    Filter::Cond(Cond::Scope {
                        field,
                        op: StrOp::In(vec![v.to_owned()]),
                    })
                })
                .collect(),
        )
    }

    /// Exactly this scope: the ids set in `scope` match and the others are unset.
    pub fn exact_scope(scope: &Scope) -> Filter {
        let mut parts = match Filter::from_scope(scope) {
            Filter::And(p) => p,
            other => vec![other],
        };
        for field in ScopeField::ALL {
            if scope.get(field).is_none() {
                parts.push(Filter::Not(Box::new(Filter::Cond(Cond::Scope {
                    field,
                    op: StrOp::Exists,
                }))));
            }
        }
        Filter::And(parts)
    }

    /// `self AND other`, flattening nested conjunctions.
    pub fn and(self, other: Filter) -> Filter {
        let mut parts = Vec::new();
        for f in [self, other] {
            match f {
                Filter::And(children) => parts.extend(children),
                f => parts.push(f),
            }
        }
        Filter::And(parts)
    }

    /// A read's filter as every transport takes it: the JSON `filters`
    /// (absent: everything) ANDed with the scope ids the request names at
    /// its top level (query string, body or tool arguments), each checked;
    /// `"*"` means "has this id", as in the filter language.
    pub fn with_ids(filters: Option<&Value>, ids: &Scope) -> Result<Filter> {
        let mut filter = Filter::parse(filters.unwrap_or(&Value::Null))?;
        for (field, v) in ids.iter() {
            let op = if v == "*" {
                StrOp::Exists
            } else {
                crate::memory::validate_scope_id(field, v)?;
                StrOp::In(vec![v.to_owned()])
            };
            filter = filter.and(Filter::Cond(Cond::Scope { field, op }));
        }
        Ok(filter)
    }

    /// Parses a JSON filter. `null` or `{}` match everything.
    pub fn parse(value: &Value) -> Result<Filter> {
        match value {
            Value::Null => Ok(Filter::all()),
            Value::Object(map) => parse_object(map, "filters", 0),
            other => Err(Error::filter(format!(
                "`filters` must be a JSON object, got {}",
                type_name(other)
            ))),
        }
    }

    /// Evaluates the filter against a record.
    pub fn matches(&self, r: &impl Filterable) -> bool {
        match self {
            Filter::And(children) => children.iter().all(|c| c.matches(r)),
            Filter::Or(children) => children.iter().any(|c| c.matches(r)),
            Filter::Not(inner) => !inner.matches(r),
            Filter::Cond(cond) => cond.matches(r),
        }
    }

    /// Whether every record this filter accepts must carry a specific scope id
    /// (a read must name at least one scope id).
    pub fn names_scope(&self) -> bool {
        self.scope_plan().is_some()
    }

    /// A plan over the scope-id postings that yields a superset of the
    /// matching records, if the filter bounds the scope. Used to estimate the
    /// filtered set's size and to enumerate it.
    pub fn scope_plan(&self) -> Option<ScopePlan> {
        match self {
            Filter::Cond(Cond::Scope {
                field,
                op: StrOp::In(values),
            }) => Some(ScopePlan::Ids(*field, values.clone())),
            Filter::Cond(_) | Filter::Not(_) => None,
            Filter::And(children) => {
                let plans: Vec<_> = children.iter().filter_map(Filter::scope_plan).collect();
                match plans.len() {
                    0 => None,
                    1 => plans.into_iter().next(),
                    _ => Some(ScopePlan::All(plans)),
                }
            }
            Filter::Or(children) => {
                if children.is_empty() {
                    return None;
                }
                let plans: Option<Vec<_>> = children.iter().map(Filter::scope_plan).collect();
                plans.map(ScopePlan::Any)
            }
        }
    }

    /// Scope ids the filter requires by plain equality at its top level
    /// (`{"user_id": "a", "agent_id": "b"}` → both). Used as a coarse pre-filter.
    pub fn required_ids(&self) -> Vec<(ScopeField, &str)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            match f {
                Filter::And(children) => stack.extend(children),
                Filter::Cond(Cond::Scope {
                    field,
                    op: StrOp::In(values),
                }) if values.len() == 1 => {
                    out.push((*field, values[0].as_str()));
                }
                _ => {}
            }
        }
        out
    }
}

/// A superset of a filter's matches expressed over scope-id postings.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopePlan {
    /// Records whose `field` is one of the values.
    Ids(ScopeField, Vec<String>),
    /// Intersection.
    All(Vec<ScopePlan>),
    /// Union.
    Any(Vec<ScopePlan>),
}

impl ScopePlan {
    /// An upper bound on the number of records, given the posting size of each id.
    pub fn estimate(&self, count: &impl Fn(ScopeField, &str) -> usize) -> usize {
        match self {
            ScopePlan::Ids(field, values) => values.iter().map(|v| count(*field, v)).sum(),
            ScopePlan::All(plans) => plans.iter().map(|p| p.estimate(count)).min().unwrap_or(0),
            ScopePlan::Any(plans) => plans.iter().map(|p| p.estimate(count)).sum(),
        }
    }

    /// The cheapest sub-plan that still bounds the set: for an intersection,
    /// the smallest member (the caller re-checks the full filter anyway).
    pub fn narrowest(&self, count: &impl Fn(ScopeField, &str) -> usize) -> ScopePlan {
        match self {
            ScopePlan::All(plans) => plans
                .iter()
                .min_by_key(|p| p.estimate(count))
                .map(|p| p.narrowest(count))
                .unwrap_or_else(|| self.clone()),
            ScopePlan::Any(plans) => {
                ScopePlan::Any(plans.iter().map(|p| p.narrowest(count)).collect())
            }
            ScopePlan::Ids(..) => self.clone(),
        }
    }

    /// The (field, id) postings to union for [`narrowest`](Self::narrowest) plans.
    pub fn postings(&self) -> Vec<(ScopeField, &str)> {
        match self {
            ScopePlan::Ids(field, values) => values.iter().map(|v| (*field, v.as_str())).collect(),
            ScopePlan::All(plans) | ScopePlan::Any(plans) => {
                plans.iter().flat_map(ScopePlan::postings).collect()
            }
        }
    }
}

impl Cond {
    fn matches(&self, r: &impl Filterable) -> bool {
        match self {
            Cond::Scope { field, op } => {
                let v = r.scope_id(*field);
                match op {
                    StrOp::In(values) => v.is_some_and(|v| values.iter().any(|x| x == v)),
                    StrOp::NotIn(values) => v.is_none_or(|v| !values.iter().any(|x| x == v)),
                    StrOp::Exists => v.is_some(),
                }
            }
            Cond::Time { field, cmp, at } => cmp.holds(r.time(*field).cmp(at)),
            Cond::Kind(kinds, negate) => kinds.contains(&r.kind()) != *negate,
            Cond::Categories(wanted, negate) => {
                wanted
                    .iter()
                    .any(|w| r.categories().iter().any(|c| c.eq_ignore_ascii_case(w)))
                    != *negate
            }
            Cond::Metadata { key, op } => {
                let v = r.metadata().get(key);
                match op {
                    ValueOp::Exists => v.is_some_and(|v| !v.is_null()),
                    ValueOp::In(values) => v.is_some_and(|v| values.iter().any(|x| json_eq(x, v))),
                    ValueOp::NotIn(values) => {
                        v.is_none_or(|v| !values.iter().any(|x| json_eq(x, v)))
                    }
                    ValueOp::Cmp(cmp, x) => {
                        v.and_then(|v| json_cmp(v, x)).is_some_and(|o| cmp.holds(o))
                    }
                    ValueOp::Contains {
                        needle,
                        case_insensitive,
                    } => match v {
                        Some(Value::String(s)) => contains(s, needle, *case_insensitive),
                        Some(Value::Array(items)) => items.iter().any(|i| match i {
                            Value::String(s) => {
                                if *case_insensitive {
                                    s.to_lowercase() == needle.to_lowercase()
                                } else {
                                    s == needle
                                }
                            }
                            other => json_eq(other, &Value::String(needle.clone())),
                        }),
                        _ => false,
                    },
                }
            }
            Cond::Keywords {
                needle,
                case_insensitive,
            } => contains(r.text(), needle, *case_insensitive),
        }
    }
}

fn contains(hay: &str, needle: &str, case_insensitive: bool) -> bool {
    if case_insensitive {
        hay.to_lowercase().contains(&needle.to_lowercase())
    } else {
        hay.contains(needle)
    }
}

/// Equality that treats `1` and `1.0` as equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Orders numbers with numbers and strings with strings; anything else is incomparable.
fn json_cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const FIELDS: &str = "AND, OR, NOT, org_id, app_id, user_id, agent_id, run_id, created_at, updated_at, kind, categories, metadata, keywords";

fn parse_object(map: &Map<String, Value>, path: &str, depth: usize) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(Error::filter(format!(
            "filter nests deeper than {MAX_DEPTH} levels at `{path}`"
        )));
    }
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        let here = format!("{path}.{key}");
        let part = match key.as_str() {
            "AND" | "and" => Filter::And(parse_list(value, &here, depth)?),
            "OR" | "or" => {
                let list = parse_list(value, &here, depth)?;
                if list.is_empty() {
                    return Err(Error::filter(format!(
                        "`{here}` must list at least one filter"
                    )));
                }
                Filter::Or(list)
            }
            "NOT" | "not" => {
                let inner = match value {
                    Value::Array(_) => Filter::And(parse_list(value, &here, depth)?),
                    Value::Object(m) => parse_object(m, &here, depth + 1)?,
                    other => {
                        return Err(Error::filter(format!(
                            "`{here}` must be a filter object or a list of them, got {}",
                            type_name(other)
                        )));
                    }
                };
                Filter::Not(Box::new(inner))
            }
            name => parse_field(name, value, &here)?,
        };
        parts.push(part);
    }
    Ok(if parts.len() == 1 {
        parts.pop().unwrap_or_else(Filter::all)
    } else {
        Filter::And(parts)
    })
}

fn parse_list(value: &Value, path: &str, depth: usize) -> Result<Vec<Filter>> {
    if let Value::Array(items) = value
        && items.len() > MAX_LIST
    {
        return Err(Error::filter(format!(
            "`{path}` lists {} entries; the maximum is {MAX_LIST}",
            items.len()
        )));
    }
    let Value::Array(items) = value else {
        return Err(Error::filter(format!(
            "`{path}` must be a list of filter objects, got {}",
            type_name(value)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(m) => parse_object(m, &format!("{path}[{i}]"), depth + 1),
            other => Err(Error::filter(format!(
                "`{path}[{i}]` must be a filter object, got {}",
                type_name(other)
            ))),
        })
        .collect()
}

/// Splits `{"op": operand}` into its operator and operand; a bare value is `eq`.
fn operator<'a>(value: &'a Value, path: &str) -> Result<(&'a str, &'a Value)> {
    match value {
        Value::Object(m) => {
            if m.len() != 1 {
                return Err(Error::filter(format!(
                    "`{path}` must hold exactly one operator (eq, ne, in, nin, gt, gte, lt, lte, contains, icontains), found {}",
                    m.len()
                )));
            }
            let (op, operand) = m
                .iter()
                .next()
                .ok_or_else(|| Error::internal("non-empty map has no entry"))?;
            Ok((op.as_str(), operand))
        }
        Value::String(s) if s == "*" => Ok(("*", value)),
        other => Ok(("eq", other)),
    }
}

fn unknown_op(path: &str, op: &str, allowed: &str) -> Error {
    Error::filter(format!(
        "unknown operator `{op}` at `{path}`; allowed here: {allowed}"
    ))
}

fn parse_field(name: &str, value: &Value, path: &str) -> Result<Filter> {
    if let Some(field) = ScopeField::from_name(name) {
        return parse_scope(field, value, path);
    }
    match name {
        "created_at" | "updated_at" => {
            let field = if name == "created_at" {
                TimeField::CreatedAt
            } else {
                TimeField::UpdatedAt
            };
            parse_time(field, value, path)
        }
        "kind" | "memory_type" => parse_kind(value, path),
        "categories" => parse_categories(value, path),
        "metadata" => {
            let Value::Object(m) = value else {
                return Err(Error::filter(format!(
                    "`{path}` must be an object of metadata keys, e.g. {{\"metadata\": {{\"city\": \"Lisbon\"}}}}"
                )));
            };
            if m.is_empty() {
                return Err(Error::filter(format!("`{path}` names no metadata key")));
            }
            let parts = m
                .iter()
                .map(|(k, v)| parse_metadata(k, v, &format!("{path}.{k}")))
                .collect::<Result<Vec<_>>>()?;
            Ok(if parts.len() == 1 {
                parts.into_iter().next().unwrap_or_else(Filter::all)
            } else {
                Filter::And(parts)
            })
        }
        "keywords" => {
            let (op, operand) = operator(value, path)?;
            let ci = match op {
                "contains" | "eq" => false,
                "icontains" => true,
                other => return Err(unknown_op(path, other, "contains, icontains")),
            };
            let needle = string(operand, path)?;
            Ok(Filter::Cond(Cond::Keywords {
                needle,
                case_insensitive: ci,
            }))
        }
        other => Err(Error::filter(format!(
            "unknown filter field `{other}` at `{path}`; known fields: {FIELDS} (put custom keys under `metadata`)"
        ))),
    }
}

fn string(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(Error::filter(format!(
            "`{path}` must not be an empty string"
        ))),
        other => Err(Error::filter(format!(
            "`{path}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn strings(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(items) if items.len() > MAX_LIST => Err(Error::filter(format!(
            "`{path}` lists {} values; the maximum is {MAX_LIST}",
            items.len()
        ))),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, s)| string(s, &format!("{path}[{i}]")))
            .collect(),
        Value::Array(_) => Err(Error::filter(format!(
            "`{path}` must list at least one value"
        ))),
        other => Err(Error::filter(format!(
            "`{path}` must be a list of strings, got {}",
            type_name(other)
        ))),
    }
}

fn parse_scope(field: ScopeField, value: &Value, path: &str) -> Result<Filter> {
    let (op, operand) = operator(value, path)?;
    let op = match op {
        "*" => StrOp::Exists,
        "eq" => {
            let s = string(operand, path)?;
            if s == "*" {
                StrOp::Exists
            } else {
                StrOp::In(vec![s])
            }
        }
        "ne" => StrOp::NotIn(vec![string(operand, path)?]),
        "in" => StrOp::In(strings(operand, path)?),
        "nin" => StrOp::NotIn(strings(operand, path)?),
        other => return Err(unknown_op(path, other, "eq, ne, in, nin, \"*\"")),
    };
    Ok(Filter::Cond(Cond::Scope { field, op }))
}

/// Accepts RFC 3339 (`2024-07-01T10:00:00Z`), a date (`2024-07-01`, midnight UTC) or Unix seconds.
pub fn parse_timestamp(v: &Value, path: &str) -> Result<Timestamp> {
    match v {
        Value::String(s) => {
            if let Ok(ts) = s.parse::<Timestamp>() {
                return Ok(ts);
            }
            if let Ok(date) = s.parse::<jiff::civil::Date>() {
                return date
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .map(|z| z.timestamp())
                    .map_err(|e| Error::filter(format!("`{path}`: {e}")));
            }
            if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
                return dt
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .map(|z| z.timestamp())
                    .map_err(|e| Error::filter(format!("`{path}`: {e}")));
            }
            Err(Error::filter(format!(
                "`{path}` is not a time: `{s}` (use RFC 3339 like 2024-07-01T10:00:00Z, a date like 2024-07-01, or Unix seconds)"
            )))
        }
        Value::Number(n) => {
            let secs = n
                .as_f64()
                .ok_or_else(|| Error::filter(format!("`{path}` is not a finite number")))?;
            Timestamp::from_millisecond((secs * 1000.0) as i64)
                .map_err(|e| Error::filter(format!("`{path}` is out of range: {e}")))
        }
        other => Err(Error::filter(format!(
            "`{path}` must be a time string or Unix seconds, got {}",
            type_name(other)
        ))),
    }
}

fn parse_time(field: TimeField, value: &Value, path: &str) -> Result<Filter> {
    let Value::Object(ops) = value else {
        let at = parse_timestamp(value, path)?;
        return Ok(Filter::Cond(Cond::Time {
            field,
            cmp: Cmp::Eq,
            at,
        }));
    };
    if ops.is_empty() {
        return Err(Error::filter(format!(
            "`{path}` needs an operator: gt, gte, lt, lte, eq, ne"
        )));
    }
    // Several operators on one time field form a range: {"gte": a, "lt": b}.
    let mut parts = Vec::new();
    for (op, operand) in ops {
        let cmp = match op.as_str() {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            "lte" => Cmp::Lte,
            other => return Err(unknown_op(path, other, "gt, gte, lt, lte, eq, ne")),
        };
        let at = parse_timestamp(operand, &format!("{path}.{op}"))?;
        parts.push(Filter::Cond(Cond::Time { field, cmp, at }));
    }
    Ok(if parts.len() == 1 {
        parts.pop().unwrap_or_else(Filter::all)
    } else {
        Filter::And(parts)
    })
}

fn parse_kind(value: &Value, path: &str) -> Result<Filter> {
    let (op, operand) = operator(value, path)?;
    let parse = |s: &str| {
        s.parse::<MemoryKind>()
            .map_err(|e| Error::filter(format!("`{path}`: {}", e.message)))
    };
    let (kinds, negate) = match op {
        "eq" => (vec![parse(&string(operand, path)?)?], false),
        "ne" => (vec![parse(&string(operand, path)?)?], true),
        "in" => (
            strings(operand, path)?
                .iter()
                .map(|s| parse(s))
                .collect::<Result<_>>()?,
            false,
        ),
        "nin" => (
            strings(operand, path)?
                .iter()
                .map(|s| parse(s))
                .collect::<Result<_>>()?,
            true,
        ),
        other => return Err(unknown_op(path, other, "eq, ne, in, nin")),
    };
    Ok(Filter::Cond(Cond::Kind(kinds, negate)))
}

fn parse_categories(value: &Value, path: &str) -> Result<Filter> {
    let (op, operand) = operator(value, path)?;
    let (cats, negate) = match (op, operand) {
        ("eq" | "contains" | "icontains", Value::String(_)) => {
            (vec![string(operand, path)?], false)
        }
        ("eq" | "in" | "contains", Value::Array(_)) => (strings(operand, path)?, false),
        ("ne", Value::String(_)) => (vec![string(operand, path)?], true),
        ("nin" | "ne", Value::Array(_)) => (strings(operand, path)?, true),
        ("in" | "nin", other) => {
            return Err(Error::filter(format!(
                "`{path}.{op}` must be a list of strings, got {}",
                type_name(other)
            )));
        }
        ("eq" | "ne" | "contains" | "icontains", other) => {
            return Err(Error::filter(format!(
                "`{path}` must be a string or a list of strings, got {}",
                type_name(other)
            )));
        }
        (other, _) => return Err(unknown_op(path, other, "contains, in, nin, ne")),
    };
    Ok(Filter::Cond(Cond::Categories(cats, negate)))
}

fn parse_metadata(key: &str, value: &Value, path: &str) -> Result<Filter> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(Error::filter(format!(
            "metadata key at `{path}` must be 1..={MAX_KEY_LEN} bytes without control characters"
        )));
    }
    let (op, operand) = operator(value, path)?;
    let scalar = |v: &Value| -> Result<Value> {
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(v.clone()),
            other => Err(Error::filter(format!(
                "`{path}` must compare with a string, number or boolean, got {}",
                type_name(other)
            ))),
        }
    };
    let list = |v: &Value| -> Result<Vec<Value>> {
        match v {
            Value::Array(items) if !items.is_empty() && items.len() <= MAX_LIST => {
                items.iter().map(scalar).collect()
            }
            _ => Err(Error::filter(format!(
                "`{path}.{op}` must be a non-empty list of at most {MAX_LIST} values"
            ))),
        }
    };
    let op = match op {
        "*" => ValueOp::Exists,
        "eq" => ValueOp::In(vec![scalar(operand)?]),
        "ne" => ValueOp::NotIn(vec![scalar(operand)?]),
        "in" => ValueOp::In(list(operand)?),
        "nin" => ValueOp::NotIn(list(operand)?),
        "gt" => ValueOp::Cmp(Cmp::Gt, scalar(operand)?),
        "gte" => ValueOp::Cmp(Cmp::Gte, scalar(operand)?),
        "lt" => ValueOp::Cmp(Cmp::Lt, scalar(operand)?),
        "lte" => ValueOp::Cmp(Cmp::Lte, scalar(operand)?),
        "contains" => ValueOp::Contains {
            needle: string(operand, path)?,
            case_insensitive: false,
        },
        "icontains" => ValueOp::Contains {
            needle: string(operand, path)?,
            case_insensitive: true,
        },
        other => {
            return Err(unknown_op(
                path,
                other,
                "eq, ne, in, nin, gt, gte, lt, lte, contains, icontains, \"*\"",
            ));
        }
    };
    Ok(Filter::Cond(Cond::Metadata {
        key: key.to_owned(),
        op,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mem(user: &str, agent: Option<&str>) -> Memory {
        let now = Timestamp::from_second(1_720_000_000).unwrap();
        Memory {
            id: uuid::Uuid::nil(),
            version: 1,
            text: "Alice moved to Lisbon".into(),
            kind: MemoryKind::Semantic,
            hash: String::new(),
            scope: Scope {
                user_id: Some(user.into()),
                agent_id: agent.map(Into::into),
                ..Default::default()
            },
            metadata: json!({"city": "Lisbon", "stars": 4, "tags": ["travel", "home"]})
                .as_object()
                .unwrap()
                .clone(),
            categories: vec!["travel".into()],
            entities: vec![],
            role: None,
            created_at: now,
            updated_at: now,
            valid_at: None,
            invalid_at: None,
            expires_at: None,
            idle_ttl: None,
            embedding_model: String::new(),
            tokens: 4,
            feedback: None,
        }
    }

    fn parse(v: Value) -> Filter {
        Filter::parse(&v).unwrap()
    }

    fn err(v: Value) -> String {
        Filter::parse(&v).unwrap_err().message
    }

    #[test]
    fn bare_values_and_implicit_and() {
        let f = parse(json!({"user_id": "alice", "agent_id": "bot"}));
        assert!(f.matches(&mem("alice", Some("bot"))));
        assert!(!f.matches(&mem("alice", None)));
        assert!(!f.matches(&mem("bob", Some("bot"))));
    }

    #[test]
    fn boolean_operators() {
        let f = parse(json!({"AND": [
            {"user_id": "alice"},
            {"OR": [{"categories": {"contains": "food"}}, {"metadata": {"city": {"in": ["Lisbon", "Porto"]}}}]},
            {"NOT": {"agent_id": "evil"}}
        ]}));
        assert!(f.matches(&mem("alice", None)));
        assert!(f.matches(&mem("alice", Some("bot"))));
        assert!(!f.matches(&mem("alice", Some("evil"))));
        assert!(!f.matches(&mem("bob", None)));
    }

    #[test]
    fn ne_in_nin_and_wildcard() {
        assert!(parse(json!({"user_id": {"ne": "bob"}})).matches(&mem("alice", None)));
        assert!(parse(json!({"user_id": {"in": ["bob", "alice"]}})).matches(&mem("alice", None)));
        assert!(!parse(json!({"user_id": {"nin": ["bob", "alice"]}})).matches(&mem("alice", None)));
        assert!(parse(json!({"agent_id": "*"})).matches(&mem("alice", Some("x"))));
        assert!(!parse(json!({"agent_id": "*"})).matches(&mem("alice", None)));
    }

    #[test]
    fn dates() {
        let m = mem("alice", None); // 2024-07-03T09:46:40Z
        assert!(
            parse(json!({"created_at": {"gte": "2024-07-01", "lt": "2024-08-01"}})).matches(&m)
        );
        assert!(!parse(json!({"created_at": {"gt": "2024-07-03T10:00:00Z"}})).matches(&m));
        assert!(parse(json!({"updated_at": {"lte": 1_720_000_000}})).matches(&m));
        assert!(!parse(json!({"updated_at": {"lt": 1_720_000_000}})).matches(&m));
        assert!(err(json!({"created_at": {"gte": "yesterday"}})).contains("not a time"));
    }

    #[test]
    fn metadata_operators() {
        let m = mem("alice", None);
        assert!(parse(json!({"metadata": {"stars": {"gte": 4}}})).matches(&m));
        assert!(!parse(json!({"metadata": {"stars": {"gt": 4.0}}})).matches(&m));
        assert!(parse(json!({"metadata": {"stars": 4.0}})).matches(&m));
        assert!(parse(json!({"metadata": {"city": {"icontains": "lis"}}})).matches(&m));
        assert!(parse(json!({"metadata": {"tags": {"contains": "travel"}}})).matches(&m));
        assert!(parse(json!({"metadata": {"missing": {"ne": "x"}}})).matches(&m));
        assert!(!parse(json!({"metadata": {"missing": "*"}})).matches(&m));
        assert!(parse(json!({"keywords": {"icontains": "LISBON"}})).matches(&m));
        assert!(parse(json!({"kind": {"in": ["semantic", "episodic"]}})).matches(&m));
    }

    #[test]
    fn clear_errors() {
        assert!(
            err(json!({"user_id": {"like": "a%"}}))
                .contains("unknown operator `like` at `filters.user_id`")
        );
        assert!(err(json!({"usr_id": "alice"})).contains("unknown filter field `usr_id`"));
        assert!(err(json!({"AND": {"user_id": "a"}})).contains("must be a list"));
        assert!(err(json!({"OR": []})).contains("at least one"));
        assert!(err(json!({"user_id": 7})).contains("must be a string"));
        assert!(err(json!({"user_id": {"in": []}})).contains("at least one value"));
        assert!(err(json!({"user_id": {"eq": "a", "ne": "b"}})).contains("exactly one operator"));
        assert!(err(json!({"kind": "fact"})).contains("unknown memory kind"));
        assert!(err(json!({"user_id": {"in": vec!["a"; 300]}})).contains("maximum is 256"));
        let many: Vec<Value> = (0..300)
            .map(|i| json!({"user_id": format!("u{i}")}))
            .collect();
        assert!(err(json!({"OR": many})).contains("maximum is 256"));
        assert!(err(json!("user_id=alice")).contains("must be a JSON object"));
        let mut deep = json!({"user_id": "a"});
        for _ in 0..40 {
            deep = json!({"AND": [deep]});
        }
        assert!(err(deep).contains("deeper"));
    }

    #[test]
    fn exact_scope_requires_unset_ids_absent() {
        let exact = Filter::exact_scope(&Scope {
            user_id: Some("alice".into()),
            ..Default::default()
        });
        assert!(exact.matches(&mem("alice", None)));
        assert!(
            !exact.matches(&mem("alice", Some("bot"))),
            "a wider scope is another scope"
        );
        assert!(exact.names_scope());
    }

    #[test]
    fn scope_requirement() {
        assert!(parse(json!({"user_id": "a"})).names_scope());
        assert!(parse(json!({"AND": [{"user_id": "a"}, {"metadata": {"x": 1}}]})).names_scope());
        assert!(parse(json!({"OR": [{"user_id": "a"}, {"agent_id": "b"}]})).names_scope());
        assert!(!parse(json!({"OR": [{"user_id": "a"}, {"metadata": {"x": 1}}]})).names_scope());
        let ids = Scope {
            user_id: Some("*".into()),
            agent_id: Some("x".into()),
            ..Default::default()
        };
        let f = Filter::with_ids(None, &ids).unwrap();
        assert!(f.matches(&mem("alice", Some("x"))));
        assert!(!f.matches(&mem("alice", Some("y"))));
        let bad = Scope {
            user_id: Some("a\nb".into()),
            ..Default::default()
        };
        assert!(Filter::with_ids(None, &bad).is_err());
        assert!(!parse(json!({"user_id": "*"})).names_scope());
        assert!(!parse(json!({"user_id": {"ne": "a"}})).names_scope());
        assert!(!parse(json!({"NOT": {"user_id": "a"}})).names_scope());
        assert!(!parse(json!({})).names_scope());
    }

    #[test]
    fn plan_estimates_and_narrows() {
        let f = parse(json!({"AND": [{"org_id": "acme"}, {"user_id": {"in": ["a", "b"]}}]}));
        let plan = f.scope_plan().unwrap();
        let count = |field: ScopeField, v: &str| match (field, v) {
            (ScopeField::Org, _) => 10_000,
            (ScopeField::User, "a") => 30,
            (ScopeField::User, _) => 12,
            _ => 0,
        };
        assert_eq!(plan.estimate(&count), 42);
        assert_eq!(
            plan.narrowest(&count),
            ScopePlan::Ids(ScopeField::User, vec!["a".into(), "b".into()])
        );
        let or = parse(json!({"OR": [{"user_id": "a"}, {"org_id": "acme"}]}))
            .scope_plan()
            .unwrap();
        assert_eq!(or.estimate(&count), 10_030);
    }
}
