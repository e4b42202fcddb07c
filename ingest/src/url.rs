//! What the `kafka://` and `scylla://` backend URLs share: credentials in the userinfo
//! (`user:password@host…`) and the `tls` and `ca` parameters.
//!
//! A URL may carry a password, so nothing here puts one into a message: errors name the part of
//! the URL that is wrong, [`redacted`] leaves the credentials out of a URL that is shown, and
//! [`Credentials`] leaves the password out of its `Debug` output.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// A user name and password from a URL, percent-decoded (so a password may hold `@`, `:` or `/`,
/// written `%40`, `%3A`, `%2F`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"…").finish()
    }
}

/// Splits the credentials off an authority (what follows `://`, up to the first `/` or `?`):
/// `user:password@hosts` gives the credentials and `hosts`; an authority without `@` is all
/// hosts.
pub fn split_credentials(authority: &str) -> Result<(Option<Credentials>, &str), String> {
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Ok((None, authority));
    };
    let (user, password) = userinfo
        .split_once(':')
        .ok_or("the credentials must be user:password@ (the password is missing)")?;
    let credentials = Credentials {
        user: decoded(user).map_err(|why| format!("the user name {why}"))?,
        password: decoded(password).map_err(|why| format!("the password {why}"))?,
    };
    if credentials.user.is_empty() {
        return Err("the credentials must be user:password@ (the user name is missing)".into());
    }
    Ok((Some(credentials), hosts))
}

/// A percent-encoded URL part as text.
pub fn decoded(part: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

/// `url` without the credentials it may hold (`user:password@`), for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://…{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// How a client speaks TLS to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// A file of CA certificates (PEM) that the server's certificate must chain to; without one,
    /// the system's trust store decides.
    pub ca: Option<PathBuf>,
}

/// The parameters `tls=true|false` and `ca=FILE`, which turn TLS on in every backend URL that
/// has no TLS scheme of its own. `ca=` alone turns it on too: a CA is only of use to TLS.
#[derive(Default)]
pub struct TlsParameters {
    on: Option<bool>,
    ca: Option<PathBuf>,
}

impl TlsParameters {
    /// The names this takes, for error messages.
    pub const NAMES: &str = "tls, ca";

    /// Takes `name=value` if it is a TLS parameter (`Ok(true)`), leaves it otherwise
    /// (`Ok(false)`).
    pub fn take(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "tls" => {
                let on = value
                    .parse()
                    .map_err(|_| format!("tls must be true or false, not `{value}`"))?;
                self.on = Some(on);
            }
            "ca" if value.is_empty() => return Err("ca must name a file".into()),
            "ca" => self.ca = Some(decoded(value).map_err(|why| format!("ca {why}"))?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether and how to speak TLS.
    pub fn finish(self) -> Result<Option<Tls>, String> {
        match (self.on, self.ca) {
            (Some(false), Some(_)) => Err("ca= is for TLS, but tls=false turns it off".into()),
            (Some(false) | None, None) => Ok(None),
            (_, ca) => Ok(Some(Tls { ca })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_left_out_of_described_urls() {
        for (url, described) in [
            ("redis://:hunter2@10.0.0.5:6379/0?prefix=sb:", "redis://…@10.0.0.5:6379/0?prefix=sb:"),
            ("scylla://app:s3cret@db1:9042/chat", "scylla://…@db1:9042/chat"),
            ("kafka://app:p%40ss@k1:9093,k2:9093?tls=true", "kafka://…@k1:9093,k2:9093?tls=true"),
            ("redis://10.0.0.5:6379?prefix=a@b", "redis://10.0.0.5:6379?prefix=a@b"),
            ("file:///var/lib/switchboard/log", "file:///var/lib/switchboard/log"),
            ("memory://", "memory://"),
        ] {
            assert_eq!(redacted(url), described);
        }
    }

    #[test]
    fn credentials_are_split_off_and_percent_decoded() {
        let (credentials, hosts) = split_credentials("app:p%40ss%3Aw%2Fd@a:1,b:2").expect("valid");
        let credentials = credentials.expect("credentials");
        assert_eq!((credentials.user.as_str(), credentials.password.as_str()), ("app", "p@ss:w/d"));
        assert_eq!(hosts, "a:1,b:2");
        assert!(!format!("{credentials:?}").contains("p@ss"), "Debug shows the password");

        assert_eq!(split_credentials("a:1").expect("valid"), (None, "a:1"));
        let empty = split_credentials("app:@a:1").expect("an empty password is a password");
        assert_eq!(empty.0.map(|c| c.password), Some(String::new()));
        for (authority, reason) in [
            ("app@a:1", "password is missing"),
            (":secret@a:1", "user name is missing"),
            ("app:%FF@a:1", "password is not UTF-8"),
        ] {
            let error = split_credentials(authority).expect_err(authority);
            assert!(error.contains(reason) && !error.contains("secret"), "{authority}: {error}");
        }
    }

    #[test]
    fn tls_is_turned_on_by_tls_or_ca() {
        let tls = |pairs: &[(&str, &str)]| {
            let mut parameters = TlsParameters::default();
            for (name, value) in pairs {
                assert!(parameters.take(name, value)?, "{name} is a TLS parameter");
            }
            parameters.finish()
        };
        assert_eq!(tls(&[]), Ok(None));
        assert_eq!(tls(&[("tls", "false")]), Ok(None));
        assert_eq!(tls(&[("tls", "true")]), Ok(Some(Tls { ca: None })));
        let ca = Some(Tls { ca: Some("/etc/ssl/my ca.pem".into()) });
        assert_eq!(tls(&[("ca", "/etc/ssl/my%20ca.pem")]), Ok(ca.clone()));
        assert_eq!(tls(&[("tls", "true"), ("ca", "/etc/ssl/my%20ca.pem")]), Ok(ca));
        assert!(
            tls(&[("tls", "false"), ("ca", "/ca.pem")]).is_err_and(|e| e.contains("tls=false"))
        );
        assert!(tls(&[("tls", "yes")]).is_err_and(|e| e.contains("true or false")));
        assert!(tls(&[("ca", "")]).is_err_and(|e| e.contains("name a file")));
        assert_eq!(TlsParameters::default().take("prefix", "x"), Ok(false));
    }
}
