//! Which content types uploads may have: an allow-list of `type/subtype` and `type/*` patterns,
//! configured as one comma-separated string.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderValue;

use crate::error::ApiError;

/// Longest `Content-Type` an upload may have, in bytes.
const MAX_CONTENT_TYPE_BYTES: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaTypes {
    /// Lower-cased `type/subtype` or `type/*`.
    patterns: Vec<String>,
}

impl FromStr for MediaTypes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let patterns: Vec<String> = s
            .split(',')
            .map(|pattern| pattern.trim().to_ascii_lowercase())
            .filter(|pattern| !pattern.is_empty())
            .collect();
        if patterns.is_empty() {
            return Err("list at least one content type, such as `image/*,application/pdf`".into());
        }
        if let Some(bad) = patterns.iter().find(|p| essence(p).is_none()) {
            return Err(format!("`{bad}` is not a content type such as `image/png` or `image/*`"));
        }
        Ok(MediaTypes { patterns })
    }
}

impl fmt::Display for MediaTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

impl MediaTypes {
    /// The upload's content type as given (parameters such as `charset` included), if the
    /// allow-list takes it.
    pub fn check(&self, header: Option<&HeaderValue>) -> Result<String, ApiError> {
        let Some(header) = header else {
            return Err(ApiError::unsupported_media_type(
                "an upload needs a Content-Type header naming the file's type",
            ));
        };
        let given = header
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|given| given.len() <= MAX_CONTENT_TYPE_BYTES)
            .ok_or_else(|| ApiError::unsupported_media_type("the Content-Type is not readable"))?;
        let Some((kind, subtype)) = essence(given) else {
            return Err(ApiError::unsupported_media_type(format!(
                "`{given}` is not a content type"
            )));
        };
        let allowed = self.patterns.iter().any(|pattern| {
            let (want_kind, want_subtype) = pattern.split_once('/').unwrap_or_default();
            (want_kind == "*" || want_kind == kind)
                && (want_subtype == "*" || want_subtype == subtype)
        });
        if !allowed {
            return Err(ApiError::unsupported_media_type(format!(
                "uploads of type `{kind}/{subtype}` are not accepted; accepted are {self}"
            )));
        }
        Ok(given.to_owned())
    }
}

/// The lower-cased `type` and `subtype` of a content type, without its parameters, if it has
/// that shape.
fn essence(content_type: &str) -> Option<(String, String)> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/')?;
    let token = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+*".contains(c))
    };
    (token(kind) && token(subtype)).then(|| (kind.to_owned(), subtype.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(types: &str, content_type: &str) -> Result<String, String> {
        let types: MediaTypes = types.parse().unwrap();
        types.check(Some(&HeaderValue::from_str(content_type).unwrap())).map_err(|e| e.message)
    }

    #[test]
    fn patterns_match_types_and_wildcards() {
        let types = "image/*, application/PDF,text/plain";
        assert_eq!(check(types, "image/png").unwrap(), "image/png");
        assert_eq!(check(types, "Image/JPEG").unwrap(), "Image/JPEG");
        assert_eq!(check(types, "application/pdf").unwrap(), "application/pdf");
        assert_eq!(
            check(types, "text/plain; charset=utf-8").unwrap(),
            "text/plain; charset=utf-8",
            "parameters are kept"
        );
        let refused = check(types, "text/html").unwrap_err();
        assert!(refused.contains("`text/html` are not accepted"), "{refused}");
        assert!(check(types, "image").is_err());
        assert!(check(types, "/png").is_err());
        assert!(check("*/*", "application/x-anything").is_ok());
        let missing = types.parse::<MediaTypes>().unwrap().check(None).unwrap_err();
        assert_eq!(missing.code, "unsupported_media_type");
    }

    #[test]
    fn lists_are_checked_when_configured() {
        assert!("".parse::<MediaTypes>().is_err());
        assert!("image/*,pdf".parse::<MediaTypes>().is_err());
        let types: MediaTypes = "image/*, video/*".parse().unwrap();
        assert_eq!(types.to_string(), "image/*,video/*");
    }
}
