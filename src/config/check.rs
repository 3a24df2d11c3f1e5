//! The helpers validation builds its errors with: the file a value came from, and the checks
//! several sections share.

use std::fmt;
use std::path::{Path, PathBuf};

use http::Uri;

use super::ConfigError;

/// Validation context: the file name plus helpers that build precise errors.
pub(super) struct Check<'a> {
    pub(super) file: &'a Path,
}

impl Check<'_> {
    pub(super) fn invalid(
        &self,
        key: &str,
        value: impl fmt::Debug,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value: format!("{value:?}"),
            problem: problem.into(),
        }
    }

    /// Anchors a relative path at the config file's folder.
    pub(super) fn resolve(&self, key: &str, path: &mut PathBuf) -> Result<(), ConfigError> {
        if path.as_os_str().is_empty() {
            return Err(self.invalid(key, "", "must name a file"));
        }
        if path.is_relative() {
            *path = self.file.parent().unwrap_or(Path::new(".")).join(&*path);
        }
        Ok(())
    }

    pub(super) fn http_url(
        &self,
        key: &str,
        text: &str,
        allow_path: bool,
    ) -> Result<Uri, ConfigError> {
        http_url(text, allow_path).map_err(|problem| self.invalid(key, text, problem))
    }
}

/// `text` as an `http://` or `https://` URL with a host and no query (and, unless
/// `allow_path`, no path), or why not.
pub(super) fn http_url(text: &str, allow_path: bool) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|e| format!("not a URL ({e})"))?;
    let problem = match () {
        _ if !matches!(uri.scheme_str(), Some("http" | "https")) => {
            "must start with http:// or https://"
        }
        _ if uri.host().is_none_or(str::is_empty) => "has no host",
        _ if uri.query().is_some() => "must not have a query",
        _ if !allow_path && !matches!(uri.path(), "" | "/") => {
            "must not have a path: requests keep their own path"
        }
        _ => return Ok(uri),
    };
    Err(problem.to_owned())
}
