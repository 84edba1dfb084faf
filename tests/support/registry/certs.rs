//! Certificates the registry tests make for themselves with the `openssl`
//! CLI (Debian's openssl, installed by scripts/test-deps): a CA, a server
//! certificate it signs for `127.0.0.1` and `localhost`, and a self-signed
//! certificate whose key signs the token issuer's JWTs. All keys are EC
//! P-256: instant to make, and accepted by Go's TLS, rustls and
//! distribution's token verifier (ES256).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key (PKCS#8 PEM), as files.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    /// The certificate, PEM.
    pub(crate) cert: PathBuf,
    /// Its private key, PKCS#8 PEM.
    pub(crate) key: PathBuf,
}

/// Runs `openssl ARGS` in `dir`; its stderr in the error.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running openssl (scripts/test-deps installs it): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A self-signed certificate (a CA: `basicConstraints CA:TRUE`) named
/// `NAME.crt`/`NAME.key` in `dir`, with common name `cn`.
pub(crate) fn self_signed(dir: &Path, name: &str, cn: &str) -> Result<CertFiles, String> {
    let cert = format!("{name}.crt");
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    )?;
    Ok(CertFiles {
        cert: dir.join(cert),
        key: dir.join(key),
    })
}

/// A server certificate for `127.0.0.1` and `localhost` signed by `ca`,
/// as `server.crt`/`server.key` in `dir`.
pub(crate) fn server_cert(dir: &Path, ca: &CertFiles) -> Result<CertFiles, String> {
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| format!("writing {}: {e}", ext.display()))?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    let ca_cert = ca.cert.to_string_lossy();
    let ca_key = ca.key.to_string_lossy();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    )?;
    Ok(CertFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}
