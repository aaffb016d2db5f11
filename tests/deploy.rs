//! The shipped deployments keep what they must across restarts: the Kubernetes
//! configuration (the ConfigMap every manifest under `deploy/kubernetes` renders,
//! with the token store on the volume `.ci/deploy.sh` checks is a claim in `base`)
//! started twice on one volume carries Exact Online's rotated refresh token over,
//! and the provider never sees the spent one again.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use tokenproxy::demo::ProviderOptions;

/// `deploy/kubernetes/common/tokenproxy.toml` with the pod's paths and addresses
/// mapped into `root` and onto the local provider; the Secret's files written.
fn pod_config(w: &World, root: &Path, volume: &Path) -> std::path::PathBuf {
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/common/tokenproxy.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let secrets = root.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for (file, value) in [
        ("client_id", "demo-client"),
        ("client_secret", "demo-secret"),
        ("refresh_token", "demo-refresh-0"),
        ("admin-key", "an-admin-key-for-the-test"),
    ] {
        std::fs::write(secrets.join(file), value).unwrap();
    }
    let text = text
        .replace("/var/run/secrets/tokenproxy", secrets.to_str().unwrap())
        .replace("/var/lib/tokenproxy", volume.to_str().unwrap())
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"")
        .replace("\"0.0.0.0:9090\"", "\"127.0.0.1:0\"")
        .replace("https://start.exactonline.nl/api/", &w.provider.api_url)
        // The preset's 570-s floor between refreshes, cut so that the test can
        // make the second pod refresh at once.
        .replace(
            "region = \"nl\"",
            &format!(
                "region = \"nl\"\ntoken_url = \"{}\"\nmin_interval = \"1s\"",
                w.provider.token_url
            ),
        );
    assert!(
        text.contains(&w.provider.token_url),
        "the shipped config changed shape"
    );
    let path = root.join("tokenproxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_config_keeps_a_rotated_refresh_token_across_pod_restarts() {
    // Exact Online: every refresh rotates the refresh token and the old one is refused.
    let w = World::new(ProviderOptions {
        lifetime: Duration::from_secs(600),
        ..ProviderOptions::default()
    })
    .await;
    let root = w.dir.path().join("pod");
    let volume = root.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let config = pod_config(&w, &root, &volume);
    let text = std::fs::read_to_string(&config).unwrap();

    // The first pod: the Secret's refresh token is spent, the rotated one stored.
    let p = w.spawn(&text);
    let (status, _) = get(&p.url("/exact/v1/1/crm/Accounts")).await;
    assert_eq!(status, 200);
    assert_eq!(w.provider.tokens_issued(), 1);
    drop(p);

    // The pod restarts on the same volume: its token is still there, and the next
    // refresh (forced, as a 401 would) presents the rotated refresh token.
    let p = w.spawn(&text);
    let (status, _) = get(&p.url("/exact/v1/1/crm/Accounts")).await;
    assert_eq!(status, 200);
    assert_eq!(
        w.provider.tokens_issued(),
        1,
        "the stored access token was used"
    );
    w.provider.revoke_access();
    // The floor between refreshes (1 s here) counts from the first pod's refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = get(&p.url("/exact/v1/1/crm/Accounts")).await;
    assert_eq!(status, 200, "{}", p.log());
    assert_eq!(w.provider.tokens_issued(), 2);
    assert_eq!(
        w.provider.reuse_detected(),
        0,
        "a spent refresh token was presented"
    );
    assert!(!w.provider.chain_revoked());
    drop(p);

    // The oracle: a pod on an empty volume (an emptyDir) presents the Secret's spent
    // token, and a strict provider sees the reuse.
    let fresh = root.join("empty-volume");
    std::fs::create_dir_all(&fresh).unwrap();
    let text = text.replace(volume.to_str().unwrap(), fresh.to_str().unwrap());
    let p = w.spawn(&text);
    p.wait_log("invalid_grant").await;
    assert_eq!(w.provider.reuse_detected(), 1);
}
