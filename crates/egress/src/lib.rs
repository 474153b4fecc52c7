//! Egress policy: outbound requests that carry application data (webhooks, bot callbacks, LLM providers added
//! through the admin API) must not reach the server's own network (loopback, private ranges, cloud metadata
//! at 169.254.169.254...) unless the operator allows those ranges. The check runs on the addresses a name
//! resolves to, inside the HTTP client's resolver, so a name that resolves to a private address is refused
//! at connect time (no rebinding window between a check and the connection); literal IP URLs are checked
//! before the request; redirects are not followed and proxies from the environment are not used (either
//! would bypass the check).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("{0} is in a private or reserved address range")]
    Forbidden(IpAddr),
    #[error("{0} does not resolve to an allowed address")]
    NoAllowedAddress(String),
}

/// Which destinations outbound requests may reach. Public unicast addresses always; private and reserved
/// ranges only when listed in `allow`.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// `allow`: ranges reachable although private (e.g. `127.0.0.1/32` for a receiver on the same host).
    pub fn new(allow: Vec<IpNet>) -> Self {
        EgressPolicy { allow }
    }

    /// Parses CIDRs (`10.0.0.0/8`) or single addresses (`127.0.0.1`, `::1`).
    pub fn parse(allow: &[String]) -> Result<Self, String> {
        let nets = allow
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an address or CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressPolicy::new(nets))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_restricted(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL's syntax, scheme and (for a literal address) the address. Names are checked when they
    /// are resolved for the connection.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, EgressError> {
        let url = url::Url::parse(raw).map_err(|e| EgressError::InvalidUrl(e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(EgressError::Scheme);
        }
        match url.host() {
            None => return Err(EgressError::InvalidUrl("no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(url)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(EgressError::Forbidden(ip))
        }
    }

    /// An HTTP client that can only reach what this policy allows: guarded resolver, no redirects, no
    /// environment proxies.
    pub fn client(&self, timeout: Duration, user_agent: &str) -> reqwest::Result<reqwest::Client> {
        self.guard(reqwest::Client::builder())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(user_agent)
            .build()
    }

    /// [`EgressPolicy::client`] that also checks each request's URL when it is made: a literal address never
    /// goes through the resolver, so a URL stored under a more permissive policy would otherwise still be
    /// reached after the operator tightened it.
    pub fn guarded_client(&self, timeout: Duration, user_agent: &str) -> reqwest::Result<GuardedClient> {
        Ok(GuardedClient {
            client: self.client(timeout, user_agent)?,
            policy: self.clone(),
        })
    }

    /// Restricts a client being built (whatever its other settings) to what this policy allows: the guarded
    /// resolver, no redirects, no environment proxies.
    pub fn guard(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
            .dns_resolver(Arc::new(GuardedResolver { policy: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    }
}

/// An HTTP client whose every request passes the policy: the URL (scheme, literal address) when the request
/// is made, every resolved address at connect time.
#[derive(Clone, Debug)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: EgressPolicy,
}

impl GuardedClient {
    /// A POST to `url`, or why the policy refuses it.
    pub fn post(&self, url: &str) -> Result<reqwest::RequestBuilder, EgressError> {
        let url = self.policy.check_url(url)?;
        Ok(self.client.post(url))
    }
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Not a public unicast address: loopback, private, link-local, shared (CGNAT), multicast, documentation,
/// benchmarking, reserved, unspecified.
fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
                || o[0] >= 240 // 240.0.0.0/4 reserved
        }
        IpAddr::V6(v6) => {
            let s0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s0 & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s0 & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
                || (s0 == 0x2001 && v6.segments()[1] == 0x0db8) // 2001:db8::/32 documentation
        }
    }
}

/// Resolves with the system resolver and keeps only allowed addresses.
struct GuardedResolver {
    policy: EgressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(EgressError::NoAllowedAddress(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_reserved_ranges_are_refused_by_default() {
        let p = EgressPolicy::default();
        for s in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!p.allows(ip(s)), "{s} must be refused");
        }
        for s in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "172.32.0.1"] {
            assert!(p.allows(ip(s)), "{s} must be allowed");
        }
    }

    #[test]
    fn allowed_ranges_open_exactly_what_they_name() {
        let p = EgressPolicy::parse(&["127.0.0.1".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::ffff:127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(p.allows(ip("10.1.200.3")));
        assert!(!p.allows(ip("10.2.0.1")));
        assert!(EgressPolicy::parse(&["nonsense".into()]).is_err());
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_addresses() {
        let p = EgressPolicy::default();
        assert!(p.check_url("https://example.com/hook").is_ok());
        assert_eq!(p.check_url("ftp://example.com/").unwrap_err(), EgressError::Scheme);
        assert_eq!(
            p.check_url("http://169.254.169.254/latest").unwrap_err(),
            EgressError::Forbidden(ip("169.254.169.254"))
        );
        assert_eq!(
            p.check_url("http://[::1]:8080/").unwrap_err(),
            EgressError::Forbidden(ip("::1"))
        );
        assert!(matches!(p.check_url("not a url"), Err(EgressError::InvalidUrl(_))));
    }

    #[test]
    fn guarded_requests_check_literal_addresses_each_time() {
        let strict = EgressPolicy::default()
            .guarded_client(Duration::from_secs(1), "test")
            .unwrap();
        assert_eq!(
            strict.post("http://127.0.0.1:9/hook").unwrap_err(),
            EgressError::Forbidden(ip("127.0.0.1"))
        );
        assert!(matches!(
            strict.post("http://[::ffff:10.0.0.1]/"),
            Err(EgressError::Forbidden(_))
        ));
        assert!(strict.post("https://example.com/hook").is_ok());
        let open = EgressPolicy::parse(&["127.0.0.1".into()]).unwrap();
        let open = open.guarded_client(Duration::from_secs(1), "test").unwrap();
        assert!(open.post("http://127.0.0.1:9/hook").is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_not_connected() {
        let p = EgressPolicy::default();
        let client = p.client(Duration::from_secs(2), "test").unwrap();
        // `localhost` resolves to loopback only.
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut refused = false;
        while let Some(e) = source {
            refused |= matches!(e.downcast_ref::<EgressError>(), Some(EgressError::NoAllowedAddress(_)));
            source = e.source();
        }
        assert!(refused, "{err:?}");
    }
}
