//! Compiled GRPCRoute filters.
use crate::model::Backend;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeaderModifierFilter {
    #[serde(serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

fn ser_pairs<S: Serializer>(pairs: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        pairs
            .iter()
            .map(|(n, v)| serde_json::json!({"name": n.as_str(), "value": String::from_utf8_lossy(v.as_bytes())})),
    )
}

fn ser_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

impl HeaderModifierFilter {
    /// Applies remove, then set (replacing every value), then add (appending to an
    /// existing value with a comma, as the Gateway API specifies).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            let joined = {
                let mut existing = headers.get_all(name).iter().peekable();
                if existing.peek().is_none() {
                    None
                } else {
                    let mut buf = Vec::new();
                    for v in existing {
                        buf.extend_from_slice(v.as_bytes());
                        buf.push(b',');
                    }
                    buf.extend_from_slice(value.as_bytes());
                    // Joining valid values with ',' always yields a valid value.
                    HeaderValue::from_bytes(&buf).ok()
                }
            };
            headers.insert(name.clone(), joined.unwrap_or_else(|| value.clone()));
        }
    }
}

/// `RequestMirror`: a copy of the request goes to `backend`, its response is dropped.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorFilter {
    pub backend: Backend,
    /// Share of requests mirrored, in parts per million.
    pub parts_per_million: u32,
}

impl MirrorFilter {
    /// `random` is uniform over u32.
    pub fn should_mirror(&self, random: u32) -> bool {
        ((u64::from(random) * 1_000_000) >> 32) < u64::from(self.parts_per_million)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hn(s: &str) -> HeaderName {
        HeaderName::from_bytes(s.as_bytes()).expect("name")
    }
    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("value")
    }

    #[test]
    fn set_add_remove() {
        let f = HeaderModifierFilter {
            set: vec![(hn("x-set"), hv("new"))],
            add: vec![(hn("x-add"), hv("b")), (hn("x-fresh"), hv("1"))],
            remove: vec![hn("x-gone")],
        };
        let mut h = HeaderMap::new();
        h.append(hn("x-set"), hv("old1"));
        h.append(hn("x-set"), hv("old2"));
        h.append(hn("x-add"), hv("a"));
        h.append(hn("x-gone"), hv("bye"));
        h.append(hn("x-keep"), hv("k"));
        f.apply(&mut h);
        let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap_or("?").to_owned()).collect::<Vec<_>>();
        assert_eq!(all("x-set"), vec!["new"]);
        assert_eq!(all("x-add"), vec!["a,b"]);
        assert_eq!(all("x-fresh"), vec!["1"]);
        assert!(all("x-gone").is_empty());
        assert_eq!(all("x-keep"), vec!["k"]);
    }

    #[test]
    fn mirror_share() {
        let backend = Backend::unavailable_for_tests();
        let never = MirrorFilter { backend: backend.clone(), parts_per_million: 0 };
        let always = MirrorFilter { backend: backend.clone(), parts_per_million: 1_000_000 };
        let half = MirrorFilter { backend, parts_per_million: 500_000 };
        for r in [0u32, 1, u32::MAX / 2, u32::MAX] {
            assert!(!never.should_mirror(r));
            assert!(always.should_mirror(r));
        }
        assert!(half.should_mirror(0));
        assert!(half.should_mirror(u32::MAX / 2 - 10));
        assert!(!half.should_mirror(u32::MAX / 2 + 10));
        assert!(!half.should_mirror(u32::MAX));
    }
}
