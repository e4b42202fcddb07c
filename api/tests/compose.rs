//! docker-compose.yml cannot run here (no Docker), so this checks that it agrees with
//! switchboard itself: every setting it passes exists, the backend URLs point at the services
//! and ports the engines really listen on, and the nodes are distinct.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;

use serde_yaml_ng::Value;

fn compose() -> BTreeMap<String, Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml");
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    value.apply_merge().expect("merge keys resolve");
    let services = value.get("services").expect("services").clone();
    serde_yaml_ng::from_value(services).expect("services map")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let env = service.get("environment").cloned().unwrap_or(Value::Null);
    let env: BTreeMap<String, Value> = serde_yaml_ng::from_value(env).expect("environment map");
    env.into_iter().map(|(k, v)| (k, text(&v))).collect()
}

/// `host:port` of a backend URL such as `kafka://kafka:9092?replication=1`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").expect("URL").1;
    rest.split(['/', '?']).next().expect("authority")
}

#[test]
fn compose_agrees_with_switchboards_configuration() {
    let services = compose();
    let help =
        Command::new(env!("CARGO_BIN_EXE_switchboard")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();

    let image = |name: &str| {
        text(services[name].get("image").unwrap_or_else(|| panic!("{name} has an image")))
    };
    assert!(image("kafka").starts_with("apache/kafka:"));
    assert!(image("scylla").starts_with("scylladb/scylla:"));
    assert!(image("redis").starts_with("redis:"));
    let kafka = environment(&services["kafka"]);
    assert!(kafka["KAFKA_PROCESS_ROLES"].contains("controller"), "Kafka runs in KRaft mode");
    let advertised =
        kafka["KAFKA_ADVERTISED_LISTENERS"].strip_prefix("PLAINTEXT://").unwrap().to_owned();

    let nodes: Vec<(&String, &Value)> =
        services.iter().filter(|(_, s)| s.get("build").is_some()).collect();
    let mut roles = Vec::new();
    let mut node_ids = HashSet::new();
    for (name, service) in &nodes {
        let env = environment(service);
        for key in env.keys().filter(|k| k.starts_with("SWITCHBOARD_")) {
            assert!(
                help.contains(&format!("[env: {key}")),
                "{name}: {key} is not a switchboard setting"
            );
        }
        assert_eq!(
            authority(&env["SWITCHBOARD_LOG"]),
            advertised,
            "{name}: log points at Kafka's listener"
        );
        assert!(env["SWITCHBOARD_LOG"].starts_with("kafka://"));
        assert!(env["SWITCHBOARD_STORE"].starts_with("scylla://"));
        assert_eq!(
            authority(&env["SWITCHBOARD_STORE"]),
            "scylla:9042",
            "{name}: ScyllaDB's CQL port"
        );
        assert_eq!(authority(&env["SWITCHBOARD_PRESENCE"]), "redis:6379", "{name}: Redis's port");
        assert!(
            node_ids.insert(env["SWITCHBOARD_NODE_ID"].clone()),
            "{name}: node ids must differ"
        );
        let depends: BTreeMap<String, Value> =
            serde_yaml_ng::from_value(service.get("depends_on").cloned().unwrap()).unwrap();
        for engine in ["kafka", "scylla", "redis"] {
            assert!(depends.contains_key(engine), "{name} waits for {engine}");
        }
        let listen_port = env["SWITCHBOARD_LISTEN"].rsplit(':').next().unwrap().to_owned();
        if env["SWITCHBOARD_ROLE"] == "api" {
            let ports: Vec<String> =
                serde_yaml_ng::from_value(service.get("ports").cloned().unwrap()).unwrap();
            assert!(
                ports.iter().any(|p| p.ends_with(&format!(":{listen_port}"))),
                "{name} publishes its listen port"
            );
        }
        roles.push(env["SWITCHBOARD_ROLE"].clone());
    }
    roles.sort();
    assert_eq!(roles, ["api", "api", "projector"]);
}

/// Any API node serves any upload only when they all keep uploads in one place: here, one volume
/// that every API node mounts where its media store points.
#[test]
fn api_nodes_share_one_media_store() {
    let services = compose();
    let api_nodes: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, service)| {
            environment(service).get("SWITCHBOARD_ROLE").map(String::as_str) == Some("api")
        })
        .collect();
    assert!(api_nodes.len() >= 2, "two API nodes at least");
    for (name, service) in api_nodes {
        let env = environment(service);
        let store = env.get("SWITCHBOARD_MEDIA_STORE").map(String::as_str);
        assert_eq!(store, Some("file:///media"), "{name} keeps uploads on the shared volume");
        let volumes: Vec<String> =
            serde_yaml_ng::from_value(service.get("volumes").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        assert!(volumes.contains(&"media:/media".to_owned()), "{name} mounts it: {volumes:?}");
    }
}
