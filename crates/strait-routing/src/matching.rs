//! Request matching: gRPC method and header matches of a GRPCRoute rule.
use http::HeaderMap;
use http::header::HeaderName;
use regex::Regex;
use serde::{Serialize, Serializer};

/// Compiled regexes are bounded so a hostile pattern cannot take unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What the matchers look at: the request path (`/package.Service/Method`) and headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// `(service, method)` of a well-formed gRPC path, `None` otherwise.
    pub fn grpc_method(&self) -> Option<(&'a str, &'a str)> {
        split_grpc_path(self.path)
    }
}

/// Splits `/service/method`. Anything else is not a gRPC path.
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// A regular expression that must match the whole input.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("invalid regular expression {source:?}: {e}"))?;
        Ok(Pattern { source: source.to_owned(), regex })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The method part of a match.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum MethodMatcher {
    /// No method match: every request.
    Any,
    /// `service` only matches the prefix `/service/`; `method` only matches any
    /// service's `method`; both match the exact path.
    Exact { service: Option<String>, method: Option<String> },
    /// Each present part must match its whole segment.
    RegularExpression { service: Option<Pattern>, method: Option<Pattern> },
}

impl MethodMatcher {
    fn matches(&self, grpc: Option<(&str, &str)>) -> bool {
        match self {
            MethodMatcher::Any => true,
            MethodMatcher::Exact { service, method } => grpc.is_some_and(|(s, m)| {
                service.as_deref().is_none_or(|want| want == s) && method.as_deref().is_none_or(|want| want == m)
            }),
            MethodMatcher::RegularExpression { service, method } => grpc.is_some_and(|(s, m)| {
                service.as_ref().is_none_or(|p| p.is_match(s)) && method.as_ref().is_none_or(|p| p.is_match(m))
            }),
        }
    }

    /// Characters in the matching service and method, the first two precedence keys.
    fn precedence(&self) -> (usize, usize) {
        match self {
            MethodMatcher::Any => (0, 0),
            MethodMatcher::Exact { service, method } => {
                (service.as_deref().map_or(0, str::len), method.as_deref().map_or(0, str::len))
            }
            MethodMatcher::RegularExpression { service, method } => {
                (service.as_ref().map_or(0, |p| p.source().len()), method.as_ref().map_or(0, |p| p.source().len()))
            }
        }
    }
}

/// One header condition. Names are case-insensitive (HeaderName is lowercase).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum HeaderMatcher {
    Exact {
        #[serde(serialize_with = "ser_header_name")]
        name: HeaderName,
        value: String,
    },
    RegularExpression {
        #[serde(serialize_with = "ser_header_name")]
        name: HeaderName,
        value: Pattern,
    },
}

fn ser_header_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

impl HeaderMatcher {
    pub fn name(&self) -> &HeaderName {
        match self {
            HeaderMatcher::Exact { name, .. } | HeaderMatcher::RegularExpression { name, .. } => name,
        }
    }

    /// A request header repeated several times matches when any of its values does.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(self.name()).iter();
        match self {
            HeaderMatcher::Exact { value, .. } => values.any(|v| v.as_bytes() == value.as_bytes()),
            HeaderMatcher::RegularExpression { value, .. } => {
                values.any(|v| v.to_str().is_ok_and(|v| value.is_match(v)))
            }
        }
    }
}

/// One entry of a rule's `matches`: all conditions must hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestMatcher {
    pub method: MethodMatcher,
    pub headers: Vec<HeaderMatcher>,
}

impl RequestMatcher {
    pub const ANY: RequestMatcher = RequestMatcher { method: MethodMatcher::Any, headers: Vec::new() };

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.method.matches(req.grpc_method()) && self.headers.iter().all(|h| h.matches(req.headers))
    }

    /// (service characters, method characters, header matches): larger wins.
    pub fn precedence(&self) -> (usize, usize, usize) {
        let (s, m) = self.method.precedence();
        (s, m, self.headers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn grpc_path_split() {
        assert_eq!(split_grpc_path("/a.B/C"), Some(("a.B", "C")));
        for bad in ["", "/", "/a", "/a/", "//m", "/a/b/c", "a/b"] {
            assert_eq!(split_grpc_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn method_matchers() {
        let exact = |s: Option<&str>, m: Option<&str>| MethodMatcher::Exact {
            service: s.map(Into::into),
            method: m.map(Into::into),
        };
        let re = |s: Option<&str>, m: Option<&str>| MethodMatcher::RegularExpression {
            service: s.map(|p| Pattern::new(p).expect("regex")),
            method: m.map(|p| Pattern::new(p).expect("regex")),
        };
        let cases: Vec<(MethodMatcher, &str, bool)> = vec![
            (exact(Some("user.v1.UserService"), Some("GetUser")), "/user.v1.UserService/GetUser", true),
            (exact(Some("user.v1.UserService"), Some("GetUser")), "/user.v1.UserService/GetUsers", false),
            (exact(Some("user.v1.UserService"), Some("GetUser")), "/user.v1.UserServiceX/GetUser", false),
            (exact(Some("user.v1.UserService"), Some("GetUser")), "/user.v1.userservice/GetUser", false),
            (exact(Some("user.v1.UserService"), None), "/user.v1.UserService/Anything", true),
            (exact(Some("user.v1.UserService"), None), "/user.v1.UserServiceX/Anything", false),
            (exact(None, Some("GetUser")), "/any.Service/GetUser", true),
            (exact(None, Some("GetUser")), "/any.Service/GetUserX", false),
            (exact(None, Some("GetUser")), "/not-grpc", false),
            (re(Some(r"user\.v[0-9]+\.UserService"), None), "/user.v2.UserService/X", true),
            (re(Some(r"user\.v[0-9]+\.UserService"), None), "/user.v2.UserServiceX/X", false),
            (re(None, Some("Get.*")), "/x.Y/GetUser", true),
            (re(None, Some("Get.*")), "/x.Y/ListGet", false),
            (re(Some("x\\..*"), Some("(Get|List)User")), "/x.Y/ListUser", true),
            (re(Some("x\\..*"), Some("(Get|List)User")), "/y.Y/ListUser", false),
            (MethodMatcher::Any, "/anything/at-all", true),
            (MethodMatcher::Any, "/not-grpc", true),
        ];
        for (m, path, want) in cases {
            let h = HeaderMap::new();
            let req = RequestView { path, headers: &h };
            assert_eq!(m.matches(req.grpc_method()), want, "{m:?} vs {path}");
        }
    }

    #[test]
    fn header_matchers() {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).expect("name");
        let exact = HeaderMatcher::Exact { name: name("x-group"), value: "a".into() };
        let re =
            HeaderMatcher::RegularExpression { name: name("x-version"), value: Pattern::new("v[12]").expect("regex") };
        let cases: Vec<(&HeaderMatcher, HeaderMap, bool)> = vec![
            (&exact, headers(&[("x-group", "a")]), true),
            (&exact, headers(&[("X-Group", "a")]), true),
            (&exact, headers(&[("x-group", "A")]), false),
            (&exact, headers(&[("x-group", "ab")]), false),
            (&exact, headers(&[("x-group", "b"), ("x-group", "a")]), true),
            (&exact, headers(&[]), false),
            (&re, headers(&[("x-version", "v1")]), true),
            (&re, headers(&[("x-version", "v3")]), false),
            (&re, headers(&[("x-version", "v12")]), false),
        ];
        for (m, h, want) in cases {
            assert_eq!(m.matches(&h), want, "{m:?} vs {h:?}");
        }
    }

    #[test]
    fn bad_regexes_are_errors() {
        assert!(Pattern::new("(unclosed").is_err());
        assert!(Pattern::new("a{1000000}{1000000}").is_err(), "size limit applies");
    }
}
