//! containerd's filter syntax, as `List` receives it.
//!
//! A request carries several filter strings; a snapshot is listed when **any** of them matches
//! (containerd's `ParseAll`). One string is a `,`-separated list of selectors that must **all**
//! match:
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath [operator value]        (no operator: the field is present)
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="                 (~=: a regular expression)
//! value     := quoted | a run of anything but "," and white space
//! quoted    := "..." with Go's escapes; /.../ and |...| too after ~=
//! ```
//!
//! Fields of a snapshot: `kind` (`active`, `view`, `committed`), `name`, `parent`, and
//! `labels.KEY` (a key with dots or slashes is quoted: `labels."containerd.io/snapshot.ref"`).
//! What containerd 1.6 sends when it looks for a remote snapshot is
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent=="…"`. The scanner follows
//! containerd's own token rules (a value starting with `.` or `,` is a separator, `|` and `/`
//! open quotes), so that a filter means here what it means to containerd.

use std::collections::BTreeMap;

use regex::Regex;

/// The most filter strings one request may carry, and the longest one.
pub const MAX_FILTERS: usize = 256;
/// The longest filter string accepted.
pub const MAX_FILTER_LEN: usize = 16 * 1024;

/// A filter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {input:?}: {message} at byte {pos}")]
pub struct FilterError {
    /// The filter string.
    pub input: String,
    /// Where parsing stopped.
    pub pos: usize,
    /// What was wrong.
    pub message: String,
}

/// The fields a filter reads: a snapshot as `List` describes it.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// `active`, `view` or `committed`.
    pub kind: &'a str,
    /// The snapshot's name or key.
    pub name: &'a str,
    /// Its parent's name (empty for none).
    pub parent: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl Fields<'_> {
    fn get(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("kind") => Some(self.kind.to_string()),
            Some("name") => Some(self.name.to_string()),
            Some("parent") => Some(self.parent.to_string()),
            Some("labels") => {
                if self.labels.is_empty() {
                    return None;
                }
                self.labels.get(&path[1..].join(".")).cloned()
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Operator,
}

impl Selector {
    fn matches(&self, fields: &Fields<'_>) -> bool {
        let value = fields.get(&self.path);
        match &self.op {
            Operator::Present => value.is_some(),
            Operator::Equal(want) => value.as_deref() == Some(want.as_str()),
            Operator::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Operator::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// Parsed filters: any of them, each all of its selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses the filters of one request. None (or only empty strings) match everything.
    pub fn parse_all(filters: &[String]) -> Result<Filter, FilterError> {
        if filters.len() > MAX_FILTERS {
            return Err(FilterError {
                input: String::new(),
                pos: 0,
                message: format!("more than {MAX_FILTERS} filters"),
            });
        }
        let mut any = Vec::with_capacity(filters.len());
        for f in filters {
            if f.is_empty() {
                // containerd: an empty filter matches all.
                any.push(Vec::new());
                continue;
            }
            any.push(Parser::new(f)?.selectors()?);
        }
        Ok(Filter { any })
    }

    /// Whether a snapshot with these fields is listed.
    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(fields)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Separator(char),
    Operator(String),
    Illegal(String),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// After an operator: the next bare word is a value (containerd's scanner state).
    value: bool,
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Result<Parser<'a>, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                input: input.chars().take(64).collect(),
                pos: 0,
                message: format!("longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        Ok(Parser {
            input,
            pos: 0,
            value: false,
        })
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            pos,
            message: message.into(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    /// The next token and where it starts, without consuming it.
    fn peek(&mut self) -> (usize, Token) {
        let (pos, value) = (self.pos, self.value);
        let t = self.scan();
        self.pos = pos;
        self.value = value;
        t
    }

    fn scan(&mut self) -> (usize, Token) {
        let skipped = self.rest().len() - self.rest().trim_start().len();
        self.pos += skipped;
        let start = self.pos;
        let Some(c) = self.rest().chars().next() else {
            return (start, Token::Eof);
        };
        if c == '\0' {
            return (start, Token::Illegal("unexpected null".into()));
        }
        match c {
            '"' | '/' | '|' => match self.scan_quoted(c) {
                Ok(()) => (
                    start,
                    Token::Quoted(self.input[start..self.pos].to_string()),
                ),
                Err(m) => (start, Token::Illegal(m)),
            },
            ',' | '.' => {
                self.pos += 1;
                self.value = false;
                (start, Token::Separator(c))
            }
            '=' | '!' | '~' => {
                let n = self
                    .rest()
                    .find(|c| !matches!(c, '=' | '!' | '~'))
                    .unwrap_or(self.rest().len());
                self.pos += n;
                self.value = true;
                (
                    start,
                    Token::Operator(self.input[start..self.pos].to_string()),
                )
            }
            _ if self.value => {
                let n = self
                    .rest()
                    .find(|c| !is_value_char(c))
                    .unwrap_or(self.rest().len());
                self.pos += n;
                self.value = false;
                (start, Token::Value(self.input[start..self.pos].to_string()))
            }
            _ if is_field_char(c) => {
                let n = self
                    .rest()
                    .find(|c| !is_field_char(c))
                    .unwrap_or(self.rest().len());
                self.pos += n;
                (start, Token::Field(self.input[start..self.pos].to_string()))
            }
            other => {
                self.pos += other.len_utf8();
                (start, Token::Illegal(format!("unexpected {other:?}")))
            }
        }
    }

    /// Moves past a quoted literal opened by `quote` (its escapes checked later).
    fn scan_quoted(&mut self, quote: char) -> Result<(), String> {
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '\n' => break,
                '\\' => {
                    chars.next();
                }
                c if c == quote => {
                    self.pos += i + c.len_utf8();
                    return Ok(());
                }
                _ => {}
            }
        }
        self.pos = self.input.len();
        Err("quoted literal not terminated".into())
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut all = vec![self.selector()?];
        loop {
            match self.peek() {
                (_, Token::Separator(',')) => {
                    self.scan();
                    all.push(self.selector()?);
                }
                (_, Token::Eof) => return Ok(all),
                (pos, t) => return Err(self.error(pos, format!("unexpected input {t:?}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        if matches!(self.peek().1, Token::Separator(_) | Token::Eof) {
            return Ok(Selector {
                path,
                op: Operator::Present,
            });
        }
        let (pos, op) = self.scan();
        let op = match op {
            Token::Operator(op) => op,
            Token::Illegal(m) => return Err(self.error(pos, m)),
            _ => return Err(self.error(pos, "expected an operator (==, != or ~=)")),
        };
        let regex = op == "~=";
        let (vpos, value) = self.scan();
        let value = match value {
            Token::Value(v) | Token::Field(v) => v,
            Token::Quoted(q) => self.unquote(vpos, &q, regex)?,
            Token::Illegal(m) => return Err(self.error(vpos, m)),
            _ => return Err(self.error(vpos, "expected a value")),
        };
        let op = match op.as_str() {
            "==" => Operator::Equal(value),
            "!=" => Operator::NotEqual(value),
            "~=" => Operator::Matches(
                Regex::new(&value).map_err(|e| self.error(vpos, format!("bad regexp: {e}")))?,
            ),
            other => return Err(self.error(pos, format!("unsupported operator {other:?}"))),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        while let (_, Token::Separator('.')) = self.peek() {
            self.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        match self.scan() {
            (_, Token::Field(f)) => Ok(f),
            (pos, Token::Quoted(q)) => self.unquote(pos, &q, false),
            (pos, Token::Illegal(m)) => Err(self.error(pos, m)),
            (pos, _) => Err(self.error(pos, "expected a field or a quoted string")),
        }
    }

    /// Go's string unquoting, with `/` and `|` as quotes too where `alternates` allows.
    fn unquote(&self, pos: usize, quoted: &str, alternates: bool) -> Result<String, FilterError> {
        let quote = quoted.chars().next().unwrap_or('"');
        if quote != '"' && !alternates {
            return Err(self.error(pos, "invalid quote encountered"));
        }
        let inner = &quoted[quote.len_utf8()..quoted.len() - quote.len_utf8()];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        let bad = || self.error(pos, "illegal escape sequence");
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let e = chars.next().ok_or_else(bad)?;
            let digits = |chars: &mut std::str::Chars<'_>, n: usize, radix: u32| {
                let s: String = chars.by_ref().take(n).collect();
                if s.len() != n {
                    return None;
                }
                u32::from_str_radix(&s, radix).ok().and_then(char::from_u32)
            };
            match e {
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '\\' => out.push('\\'),
                c if c == quote => out.push(c),
                '0'..='7' => {
                    let rest = digits(&mut chars, 2, 8).map(|c| c as u32).ok_or_else(bad)?;
                    let v = (e as u32 - '0' as u32) * 64 + rest;
                    out.push(char::from_u32(v).ok_or_else(bad)?);
                }
                'x' => out.push(digits(&mut chars, 2, 16).ok_or_else(bad)?),
                'u' => out.push(digits(&mut chars, 4, 16).ok_or_else(bad)?),
                'U' => out.push(digits(&mut chars, 8, 16).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn hit(filters: &[&str], fields: &Fields<'_>) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filter::parse_all(&f).expect("parses").matches(fields)
    }

    #[test]
    fn what_containerd_sends_for_a_remote_snapshot() {
        let l = labels(&[("containerd.io/snapshot.ref", "sha256:abc")]);
        let f = Fields {
            kind: "committed",
            name: "sha256:abc",
            parent: "default/3/sha256:def",
            labels: &l,
        };
        assert!(hit(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/sha256:def""#],
            &f
        ));
        assert!(!hit(
            &["labels.\"containerd.io/snapshot.ref\"==sha256:abc,parent==\"\""],
            &f
        ));
        assert!(!hit(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abd"#],
            &f
        ));
    }

    #[test]
    fn fields_operators_and_any_of() {
        let l = labels(&[("a.b", "x"), ("c", "yes")]);
        let f = Fields {
            kind: "active",
            name: "k1",
            parent: "",
            labels: &l,
        };
        assert!(hit(&["kind==active"], &f));
        assert!(hit(&["kind!=committed"], &f));
        assert!(hit(&["labels.a.b==x"], &f), "unquoted dotted label key");
        assert!(hit(&["labels.c"], &f), "presence");
        assert!(!hit(&["labels.d"], &f));
        assert!(hit(&["name~=^k[0-9]$"], &f));
        assert!(hit(&["name~=/^k/"], &f), "alternate quotes after ~=");
        assert!(hit(&["kind==view", "name==k1"], &f), "any of the filters");
        assert!(!hit(&["kind==view,name==k1"], &f), "all of the selectors");
        assert!(hit(&["parent==\"\""], &f));
        assert!(hit(&["  kind == active , name==k1 "], &f), "white space");
        assert!(hit(&[""], &f));
        assert!(hit(&[], &f));
    }

    #[test]
    fn bad_filters_are_errors_not_panics() {
        for bad in [
            "kind==",
            "==x",
            "kind=active",
            "labels.\"x",
            "name==/x/",
            "name~=(",
            "kind==a,",
            "\"\\q\"==x",
            "é==x",
            "\0",
        ] {
            assert!(
                Filter::parse_all(&[bad.to_string()]).is_err(),
                "{bad:?} should not parse"
            );
        }
    }
}
