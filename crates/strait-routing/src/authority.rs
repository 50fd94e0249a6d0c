//! Which Service a request names by its `:authority` (file mode and explicit
//! outbound). Transparent mode finds the Service by ClusterIP instead.
use serde::Serialize;

/// A Service and port named by a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Destination {
    pub namespace: String,
    pub name: String,
    /// `None` when the authority carries no port; the Service's only port is used then.
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("empty authority")]
    Empty,
    #[error("invalid port in authority {0:?}")]
    InvalidPort(String),
    #[error("authority {0:?} does not name a Service (<svc>[.<ns>[.svc[.<cluster-domain>]]][:port])")]
    NotAService(String),
}

/// Parses `<svc>.<ns>.svc.<cluster-domain>:<port>`, `<svc>.<ns>.svc:<port>`,
/// `<svc>.<ns>:<port>` or `<svc>:<port>` (relative to `own_namespace`).
pub fn parse_authority(
    authority: &str,
    own_namespace: &str,
    cluster_domain: &str,
) -> Result<Destination, AuthorityError> {
    with_authority(authority, own_namespace, cluster_domain, |namespace, name, port| Destination {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port,
    })
}

/// [`parse_authority`] handing borrowed `(namespace, name, port)` to `use_parts`: the
/// request path's form, which allocates only for an authority with upper-case letters.
pub fn with_authority<R>(
    authority: &str,
    own_namespace: &str,
    cluster_domain: &str,
    use_parts: impl FnOnce(&str, &str, Option<u16>) -> R,
) -> Result<R, AuthorityError> {
    if authority.is_empty() {
        return Err(AuthorityError::Empty);
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| AuthorityError::InvalidPort(authority.to_owned()))?;
            (host, Some(port))
        }
        None => (authority, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let lowered;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = host.to_ascii_lowercase();
        lowered.as_str()
    } else {
        host
    };
    let [name, namespace, svc, rest] =
        dns_labels(host).ok_or_else(|| AuthorityError::NotAService(authority.to_owned()))?;
    let domain = cluster_domain.trim_matches('.');
    let namespace = match (namespace, svc, rest) {
        (None, _, _) => own_namespace,
        (Some(ns), None, _) | (Some(ns), Some("svc"), None) => ns,
        (Some(ns), Some("svc"), Some(rest)) if rest == domain => ns,
        _ => return Err(AuthorityError::NotAService(authority.to_owned())),
    };
    Ok(use_parts(namespace, name.unwrap_or_default(), port))
}

/// `host` split at its first three dots (the last part keeps any further dots), or
/// `None` unless every dot-separated label is a DNS label. One pass over the bytes: this
/// runs per request, and splitting with `str::split` twice cost ~2k instructions a call.
fn dns_labels(host: &str) -> Option<[Option<&str>; 4]> {
    let bytes = host.as_bytes();
    let mut parts: [Option<&str>; 4] = [None; 4];
    let (mut part, mut part_start, mut label_start) = (0, 0, 0);
    for i in 0..=bytes.len() {
        // The end of the host closes the last label like a dot.
        if i < bytes.len() && bytes[i] != b'.' {
            continue;
        }
        if !is_dns_label(&bytes[label_start..i]) {
            return None;
        }
        label_start = i + 1;
        if part < 3 && i < bytes.len() {
            parts[part] = host.get(part_start..i);
            part += 1;
            part_start = i + 1;
        }
    }
    parts[part] = host.get(part_start..);
    Some(parts)
}

fn is_dns_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        let d = |ns: &str, name: &str, port: Option<u16>| Destination { namespace: ns.into(), name: name.into(), port };
        let cases: &[(&str, Result<Destination, AuthorityError>)] = &[
            ("user-service.app.svc.cluster.local:50051", Ok(d("app", "user-service", Some(50051)))),
            ("user-service.app.svc.cluster.local.:50051", Ok(d("app", "user-service", Some(50051)))),
            ("user-service.app.svc:50051", Ok(d("app", "user-service", Some(50051)))),
            ("user-service.app:50051", Ok(d("app", "user-service", Some(50051)))),
            ("user-service:50051", Ok(d("mine", "user-service", Some(50051)))),
            ("User-Service.APP:80", Ok(d("app", "user-service", Some(80)))),
            ("user-service", Ok(d("mine", "user-service", None))),
            ("", Err(AuthorityError::Empty)),
            ("a.b:0", Err(AuthorityError::InvalidPort("a.b:0".into()))),
            ("a.b:99999", Err(AuthorityError::InvalidPort("a.b:99999".into()))),
            ("a.b:x", Err(AuthorityError::InvalidPort("a.b:x".into()))),
            ("a.b.svc.other.domain:1", Err(AuthorityError::NotAService("a.b.svc.other.domain:1".into()))),
            ("a.b.c:1", Err(AuthorityError::NotAService("a.b.c:1".into()))),
            ("a..b:1", Err(AuthorityError::NotAService("a..b:1".into()))),
            ("[::1]:1", Err(AuthorityError::NotAService("[::1]:1".into()))),
            ("under_score:1", Err(AuthorityError::NotAService("under_score:1".into()))),
            ("-a.b:1", Err(AuthorityError::NotAService("-a.b:1".into()))),
            ("a.b-:1", Err(AuthorityError::NotAService("a.b-:1".into()))),
            (":80", Err(AuthorityError::NotAService(":80".into()))),
            ("a.b.svc.cluster..local:1", Err(AuthorityError::NotAService("a.b.svc.cluster..local:1".into()))),
            ("a.b.svc.cluster.local.x:1", Err(AuthorityError::NotAService("a.b.svc.cluster.local.x:1".into()))),
            ("a-1.b-2.svc.cluster.local", Ok(d("b-2", "a-1", None))),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_authority(input, "mine", "cluster.local"), want, "{input}");
        }
    }

    #[test]
    fn labels_longer_than_63_bytes_are_not_dns_labels() {
        let ok = format!("{}.app:1", "a".repeat(63));
        assert_eq!(parse_authority(&ok, "mine", "cluster.local").map(|d| d.name.len()), Ok(63));
        let long = format!("svc.{}:1", "a".repeat(64));
        assert_eq!(parse_authority(&long, "mine", "cluster.local"), Err(AuthorityError::NotAService(long.clone())));
    }
}
