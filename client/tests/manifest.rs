//! What building the library takes: its own gRPC client generated from `proto/`, never the relay
//! (which only the tests use, as a dev-dependency).

/// Every dependency used to build the library (normal and build, on any target), as the
/// package it names and its `path`, if any.
fn build_dependencies(manifest: &toml::Table) -> Vec<(String, Option<String>)> {
    let kinds = ["dependencies", "build-dependencies"];
    let mut tables: Vec<&toml::Value> = kinds.iter().filter_map(|k| manifest.get(*k)).collect();
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for target in targets.values() {
            tables.extend(kinds.iter().filter_map(|k| target.get(*k)));
        }
    }
    let mut found = Vec::new();
    for table in tables {
        for (name, spec) in table.as_table().expect("a table of dependencies") {
            // A renamed dependency names its package in `package`.
            let field = |key| {
                spec.get(key)
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned)
            };
            found.push((
                field("package").unwrap_or_else(|| name.clone()),
                field("path"),
            ));
        }
    }
    found
}

#[test]
fn the_library_does_not_depend_on_the_relay() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let dependencies = build_dependencies(&manifest);
    let names: Vec<&str> = dependencies.iter().map(|(name, _)| name.as_str()).collect();
    // The tables were read: the client's own tonic client and its code generator are there.
    for expected in ["tonic", "prost", "protox", "tonic-prost-build"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    for (name, path) in &dependencies {
        assert!(
            !matches!(name.as_str(), "gsio-relay" | "gsio-relay-core"),
            "{name} is a dependency of the library: node authors would build the relay"
        );
        assert!(
            !matches!(
                path.as_deref(),
                Some(".." | "../" | "../relay-core" | "../src")
            ),
            "{name} points at the relay ({path:?})"
        );
    }
    // The tests start the real relay: a dev-dependency, built for them only.
    let dev = manifest["dev-dependencies"].as_table().unwrap();
    assert!(dev.contains_key("gsio-relay") && dev.contains_key("gsio-relay-core"));
}
