//! Which `s3://` and `http(s)://` inputs a controller reads: only those below a prefix the
//! operator allowed (`--input-url-allow`). Without the allow-list, anyone holding the API key,
//! or a web user of a kiln-web whose cluster it is, could make the controller and the workers
//! fetch any URL their network reaches (cloud metadata endpoints, internal services): a
//! server-side request forgery. Credentials never travel in a URL.

use percent_encoding::percent_decode_str;

/// An allowed prefix: a scheme, a bucket or server (host and port) and a path prefix that
/// matches whole segments (`s3://b/logs` admits `s3://b/logs/x` and `s3://b/logs`, not
/// `s3://b/logs2`; `s3://b/logs/` admits only below `logs/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPrefix {
    url: url::Url,
}

impl UrlPrefix {
    /// Parses an operator's prefix; refuses a scheme other than s3, http and https, and a
    /// prefix with credentials, a query or an encoded separator.
    pub fn parse(prefix: &str) -> Result<UrlPrefix, String> {
        let url = checked(prefix)?;
        if !matches!(url.scheme(), "s3" | "http" | "https") {
            return Err(format!(
                "{prefix} is not an s3://, http:// or https:// prefix (file:// inputs are allowed with --file-input-root)"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{prefix} names no bucket or server"));
        }
        Ok(UrlPrefix { url })
    }

    /// Whether `url` (checked by [`checked`]) lies below this prefix.
    pub fn admits(&self, url: &url::Url) -> bool {
        let (prefix, path) = (self.url.path(), url.path());
        let below = if prefix.ends_with('/') {
            path.starts_with(prefix)
        } else {
            path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        };
        url.scheme() == self.url.scheme()
            && url.host_str() == self.url.host_str()
            && url.port_or_known_default() == self.url.port_or_known_default()
            && below
    }
}

impl std::fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl std::str::FromStr for UrlPrefix {
    type Err = String;

    fn from_str(prefix: &str) -> Result<UrlPrefix, String> {
        UrlPrefix::parse(prefix)
    }
}

/// Parses an input URL and refuses what an allow-list cannot judge by its path: credentials
/// (which must stay in the cluster's environment), a query or fragment (the stores read an
/// object by its path only), and encoded `/` or `\` in a segment (which a server may take
/// for a separator; `.` and `..` segments, encoded or not, are resolved by parsing, so the
/// allow-list judges the path they lead to). The message names no credential.
pub fn checked(input: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(input).map_err(|e| format!("{input} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "an input URL for {}://{} carries credentials: never put them in a URL; the cluster's operator gives \
             them in the AWS_* environment of the controller and the workers",
            url.scheme(),
            url.host_str().unwrap_or_default()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("the input {input} has a query or fragment: Kiln reads an object by its path only"));
    }
    let odd = url.path().split('/').any(|segment| {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".." || decoded.contains(['/', '\\'])
    });
    if odd {
        return Err(format!("the input {input} has a `.`, `..` or encoded `/` segment: give the object's plain path"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(prefix: &str, url: &str) -> bool {
        UrlPrefix::parse(prefix).unwrap().admits(&checked(url).unwrap())
    }

    #[test]
    fn a_prefix_admits_whole_segments_of_its_own_bucket_or_server_only() {
        assert!(admits("s3://logs/2026", "s3://logs/2026"));
        assert!(admits("s3://logs/2026", "s3://logs/2026/a.gz"));
        assert!(!admits("s3://logs/2026", "s3://logs/20267/a.gz"));
        assert!(admits("s3://logs/2026/", "s3://logs/2026/a.gz"));
        assert!(!admits("s3://logs/2026/", "s3://logs/2026"));
        assert!(admits("s3://logs", "s3://logs/any/thing"));
        assert!(!admits("s3://logs", "s3://logs-private/a"));
        assert!(!admits("s3://logs", "http://logs/a"));
        assert!(admits("https://data.example/pub/", "https://DATA.example:443/pub/a.txt"));
        assert!(!admits("https://data.example/pub/", "https://data.example:8443/pub/a.txt"));
        assert!(!admits("http://data.example/pub/", "http://data.example.evil/pub/a.txt"));
        assert!(!admits("http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"));
    }

    #[test]
    fn credentials_queries_and_dot_segments_are_refused_without_echoing_secrets() {
        let error = checked("s3://AKIDSECRET:hunter2@bucket/a").unwrap_err();
        assert!(
            error.contains("carries credentials") && !error.contains("hunter2") && !error.contains("AKID"),
            "{error}"
        );
        assert!(checked("http://user@host/a").is_err());
        assert!(checked("https://host/a?X-Amz-Signature=1").unwrap_err().contains("query"));
        // Dot segments, encoded or not, are resolved by parsing: the allow-list judges where
        // the URL really goes.
        assert_eq!(checked("http://host/pub/%2e%2e/admin").unwrap().path(), "/admin");
        assert_eq!(checked("s3://bucket/pub/%2E/../a").unwrap().path(), "/a");
        assert!(!admits("http://host/pub/", "http://host/pub/%2e%2e/admin"));
        assert!(!admits("s3://bucket/pub", "s3://bucket/pub/../private/a"));
        assert!(checked("http://host/pub/a%2Fb").unwrap_err().contains("segment"));
        // Some servers take a backslash for a separator.
        assert!(checked("http://host/pub/a%5c..%5cb").unwrap_err().contains("segment"));
        assert!(checked("s3://bucket/pub/a.txt").is_ok());
    }

    #[test]
    fn an_operator_prefix_must_be_s3_or_http_and_name_a_bucket_or_server() {
        assert!(UrlPrefix::parse("file:///data").unwrap_err().contains("--file-input-root"));
        assert!(UrlPrefix::parse("s3:///x").is_err());
        assert!(UrlPrefix::parse("ftp://host/x").is_err());
        assert!(UrlPrefix::parse("https://host/").is_ok());
    }
}
