"""Which runtime values meshpy takes: Envoy 1.40's feature flags and the runtime keys Envoy reads.

`envoy.reloadable_features.*` and `envoy.restart_features.*` switch Envoy code paths; a layer that
sets one to a boolean (a number reads as one too: 0 is false) flips it. meshpy accepts
- a flag at Envoy 1.40's default (`DEFAULTS`, read from the 1.40 binary's flag table), which changes
  nothing;
- a flag Envoy 1.40 does not have: Envoy logs "Using a removed guard" and ignores it, and so does
  meshpy (the value is kept and shown by /runtime);
- a flag meshpy follows both ways (`FOLLOWED`), or whose only effect is inside Envoy, or inside a part
  of Envoy meshpy has not got and refuses in a config anyway (`INERT`);
and refuses any other flag set away from its default, naming it: Envoy would then behave in a way
meshpy does not. docs/runtime.md lists each with the reason.

`envoy.deprecated_features:*` (and the dot form) only let Envoy load deprecated config fields, and
`re2.max_program_size.*` only bounds RE2 program size (meshpy's regex engine has none): accepted.
Keys of Envoy's classic runtime settings that meshpy does not read (`NOT_FOLLOWED`: circuit breaker,
outlier detection and load balancing overrides, ...) are refused; every other key is accepted and
kept, read by the keys meshpy knows (meshpy.runtime.loader) and ignored otherwise, as Envoy ignores
keys nothing reads.
"""

from __future__ import annotations

from meshpy.model.runtime import Entry

__all__ = ["DEFAULTS", "FOLLOWED", "INERT", "NOT_FOLLOWED", "REJECT_FRAGMENT", "refusal"]

RELOADABLE = "envoy.reloadable_features."
RESTART = "envoy.restart_features."

# Envoy 1.40.0's flags and their defaults.
_ON = """
    async_host_selection cares_dual_resolution_preserve_failure cel_message_serialize_text_format
    coalesce_formatter_accept_empty_values coalesce_lb_rebuilds_on_batch_update
    codec_client_enable_idle_timer_only_when_connected composite_cluster_skip_clusters_without_hosts
    conn_pool_fix_reentrancy conn_pool_grid_early_return_on_teardown
    connectivity_grid_prevent_double_h2_scheduled decouple_explicit_drain_pools_and_dns_refresh
    dfp_cluster_resolves_hosts direct_local_reply_flush_saved_response_metadata
    disallow_quic_client_udp_mmsg disallow_redirect_prefix_rewrite_with_path_match_policy
    dynamic_modules_rtld_now ecds_filter_use_parent_stats_prefix enable_batch_aware_update
    enable_cel_response_path_matching enable_compression_bomb_protection enable_new_dns_implementation
    enable_new_query_param_present_match_behavior enable_send_rst_on_user_space_socket
    ext_proc_fail_close_spurious_resp ext_proc_inject_data_with_state_update
    ext_proc_not_send_empty_data_with_false_eos ext_proc_report_client_creation_error
    ext_proc_return_stop_iteration filter_chain_drain_uses_configured_strategy
    filter_manager_forward_added_data_on_continue fix_http3_early_data_timing
    grpc_side_stream_flow_control happy_eyeballs_sort_non_ip_addresses
    header_mutation_url_encode_query_params health_check_after_cluster_warming
    hide_transport_failure_reason_in_response_body hot_restart_propagate_stat_tags
    http1_allow_query_method http1_close_connection_on_zombie_stream_complete http2_discard_host_header
    http2_fix_goaway_loadshed_point http2_flood_protection_active_streams
    http2_include_cookies_in_limits http2_mask_continuation_flags http2_reject_frames_after_end_stream
    http2_track_size_of_dropped_host_header http3_fix_goaway_loadshed_point
    http_inspector_fast_fail_invalid_method_bytes http_inspector_use_balsa_parser
    http_pause_generic_upgrade_request_body http_preserve_rst_no_error http_reject_path_with_fragment
    ja4_alpn_hex_conversion_fix json_formatter_omit_empty_values
    jwt_authn_add_verification_status_header jwt_authn_sanitize_payload_headers_filter_wide
    limit_json_parser_nesting_depth listener_filter_reentrant_continue_guard
    local_ratelimit_shadow_mode_no_short_circuit map_http_stream_reset_to_tcp_rst
    match_headers_individually mcp_filter_use_new_metadata_namespace
    metadata_formatter_only_truncate_string mobile_use_network_observer_registry
    non_graceful_drain_notifies_connections oauth2_client_retries_respect_user_retry_on
    oauth2_legacy_cbc_decrypt_compat on_demand_cluster_no_recreate_stream
    on_demand_vhds_no_recreate_stream on_demand_vhds_require_route_match orca_accept_unpadded_base64
    orca_weight_manager_use_named_metrics_first pqc_default_ecdh_curves preserve_downstream_keepalive
    propagate_downstream_rst_to_upstream propagate_upstream_rst_through_tunneled_tcp_proxy
    proxy_protocol_added_tlvs_format_string proxy_protocol_allow_duplicate_tlvs
    proxy_protocol_remove_too_long_tlvs quic_hot_restart_time_wait_before_forward
    quic_mtls_resumption_disabled_by_default quic_mtls_server_enabled
    quic_send_server_preferred_address_to_all_clients quic_support_additional_ecdsa_curves
    quic_upstream_auto_host_sni quic_upstream_client_certificates
    quic_upstream_reads_fixed_number_packets quic_validate_headers_only_content_length
    rbac_match_headers_individually rbac_respect_ignore_path_parameters re2_use_latin1_mode
    report_load_for_non_zero_stats response_headers_to_remove_on_1xx sanitize_html_stats_names
    sanitize_upstream_stream_duration_header scope_upstream_tls_session_cache_by_sni
    shadow_policy_inherit_dynamic_metadata skip_dns_lookup_for_proxied_requests
    skip_partition_original_dst_hosts skip_pending_overflow_count_on_active_rq
    spiffe_validator_use_upstream_subject_alt_names ssl_socket_report_connection_reset
    strict_stats_matcher_unpacked strip_dotdot_segments_with_parameters
    strip_path_parameters_per_segment tap_honor_tap_enabled test_feature_true
    tls_inspector_enforce_client_tls_version udp_hot_restart_session_handoff
    udp_send_zero_length_datagrams udp_set_do_not_fragment uhv_allow_malformed_url_encoding
    upstream_bind_config_fix_port_exhaustion upstream_http_filters_correct_stats_prefix
    upstream_wasm_filter_uses_root_scope uri_template_mixed_variable_literals
    use_canonical_suffix_for_quic_brokenness use_connection_event_drain use_response_decoder_handle
    use_stats_prefix_scope_for_http_filter vhds_answered_alias_cache xds_failover_to_primary_enabled
    xds_legacy_delta_skip_subsequent_node zipkin_preserve_b3_single_header_format
"""
_OFF = """
    abort_when_accessing_dead_decoder allow_multiplexed_upstream_half_close always_use_v6
    connection_close_through_filter_manager disable_quic_ip_packet_info_socket_options
    disable_quic_rx_queue_overflow_socket_options dns_cache_set_ip_version_to_remove
    dynamic_modules_strip_custom_stat_prefix enable_formatter_for_ratelimit_action_descriptor_value
    enable_lrs_server_self_ads enable_stats_explicit_tags enable_universal_header_validator
    ext_proc_graceful_grpc_close fixed_heap_use_allocated getaddrinfo_no_ai_flags
    google_grpc_disable_tls_13 grpc_timeout_returns_deadline_exceeded http2_record_histograms
    http2_use_oghttp2 http3_happy_eyeballs http_11_proxy_connect_legacy_format
    least_request_lb_count_pending_requests mobile_ipv6_probe_advanced_filtering
    oauth2_use_gcm_encryption quic_disable_data_read_immediately quic_enable_reset_ssl_after_handshake
    quic_no_tcp_delay quic_reject_all quic_session_ticket_support quic_support_web_transport
    remove_legacy_route_formatter reresolve_if_no_connections reresolve_null_addresses
    reverse_conn_force_local_reply runtime_initialized strict_chunk_parsing
    strip_upgrade_header_on_failed_websocket_upgrades tcp_proxy_delay_route_selection test_feature_false
    tls_certificate_compression_brotli unified_mux use_canonical_suffix_for_initial_rtt_estimate
    use_canonical_suffix_for_srtt xdstp_based_config_singleton_subscriptions
"""
_RESTART_ON = "worker_threads_watchdog_fix"
_RESTART_OFF = """quic_keylog_support shared_cares_dns_resolver upstream_http_filters_with_tcp_proxy
    use_cached_grpc_client_for_xds xds_failover_support"""

DEFAULTS: dict[str, bool] = {
    **{RELOADABLE + n: True for n in _ON.split()},
    **{RELOADABLE + n: False for n in _OFF.split()},
    **{RESTART + n: True for n in _RESTART_ON.split()},
    **{RESTART + n: False for n in _RESTART_OFF.split()},
}

REJECT_FRAGMENT = RELOADABLE + "http_reject_path_with_fragment"  # read by meshpy.stack.exchange

# Flags meshpy follows whichever way they are set.
FOLLOWED = {
    REJECT_FRAGMENT:
        "false: the fragment is cut from the request target (HTTP/1.1), as Envoy does, instead of a 400",
}

# Flags whose every effect is inside Envoy (nothing meshpy could show differently), or in a part of Envoy
# meshpy has not got (a config that uses it is refused anyway: revisit a family when meshpy gains that
# part): accepted at any value. By name, or by the prefix of a family.
_INERT_NAMES = {
    "coalesce_lb_rebuilds_on_batch_update": "when Envoy rebuilds load balancer state after an EDS batch",
    "enable_batch_aware_update": "when Envoy rebuilds load balancer state after an EDS batch",
    "fixed_heap_use_allocated": "how Envoy measures its own heap; meshpy's fixed_heap monitor measures "
                                "its resident memory either way",
    "runtime_initialized": "Envoy's own marker that its runtime is loaded",
    "test_feature_true": "a test sentinel", "test_feature_false": "a test sentinel",
    "abort_when_accessing_dead_decoder": "an internal assertion",
    "enable_stats_explicit_tags": "Envoy's stats (meshpy's metrics are its own)",
    "strict_stats_matcher_unpacked": "Envoy's stats (meshpy's metrics are its own)",
    "sanitize_html_stats_names": "Envoy's stats (meshpy's metrics are its own)",
    "use_stats_prefix_scope_for_http_filter": "Envoy's stats (meshpy's metrics are its own)",
    "upstream_http_filters_correct_stats_prefix": "Envoy's stats (meshpy's metrics are its own)",
    "http2_record_histograms": "Envoy's stats (meshpy's metrics are its own)",
    "enable_lrs_server_self_ads": "load reporting (LRS), which meshpy has not got",
    "report_load_for_non_zero_stats": "load reporting (LRS), which meshpy has not got",
    "upstream_wasm_filter_uses_root_scope": "Wasm filters, which meshpy has not got",
    "always_use_v6": "Envoy Mobile",
}
_INERT_PREFIXES = {
    "quic_": "QUIC", "http3_": "HTTP/3", "disable_quic_": "QUIC", "disallow_quic_": "QUIC",
    "use_canonical_suffix_for_": "QUIC", "udp_": "UDP listeners", "dynamic_modules_": "dynamic modules",
    "ext_proc_": "the ext_proc filter", "oauth2_": "the OAuth2 filter", "jwt_authn_": "the JWT filter",
    "mcp_": "the MCP filter", "tap_": "the tap filter", "mobile_": "Envoy Mobile",
    "reverse_conn_": "reverse connections", "on_demand_": "on-demand CDS and VHDS", "vhds_": "VHDS",
    "xds_": "Envoy's xDS client internals", "xdstp_": "xdstp:// resource names",
    "google_grpc_": "Envoy's Google gRPC client", "orca_": "ORCA load reports",
    "ja4_": "the TLS inspector's JA4 fingerprints", "cel_": "CEL expressions",
    "enable_cel_": "CEL expressions",
    "composite_cluster_": "composite clusters", "dfp_": "the dynamic forward proxy",
    "dns_cache_": "the dynamic forward proxy", "hot_restart_": "hot restart", "ecds_": "ECDS",
}
_INERT_RESTART = {
    "quic_keylog_support": "QUIC", "shared_cares_dns_resolver": "how Envoy shares its DNS resolver",
    "use_cached_grpc_client_for_xds": "Envoy's xDS client internals",
    "xds_failover_support": "xDS failover servers, which meshpy has not got",
    "worker_threads_watchdog_fix": "Envoy's watchdog", "upstream_http_filters_with_tcp_proxy":
        "upstream HTTP filters, which meshpy has not got",
}


def _inert(key: str) -> str | None:
    if key.startswith(RESTART):
        return _INERT_RESTART.get(key[len(RESTART):])
    name = key[len(RELOADABLE):]
    if name in _INERT_NAMES:
        return _INERT_NAMES[name]
    return next((why for prefix, why in _INERT_PREFIXES.items() if name.startswith(prefix)), None)


INERT: dict[str, str] = {k: why for k in DEFAULTS if (why := _inert(k)) is not None}

# Envoy's classic runtime settings, by key prefix, that meshpy does not read.
NOT_FOLLOWED = {
    "circuit_breakers.": "Envoy reads circuit breaker thresholds from these keys",
    "upstream.": "Envoy reads load balancing, panic threshold and retry back-off settings from these keys",
    "outlier_detection.": "Envoy reads outlier detection settings from these keys",
    "health_check.": "Envoy reads health check intervals from these keys",
    "tracing.": "Envoy reads its tracing sampling from these keys",
    "http_connection_manager.": "Envoy reads connection manager settings from these keys",
}


def refusal(key: str, entry: Entry) -> str | None:
    """Why meshpy cannot take `key` set to `entry`, or None when it can."""
    if key.startswith((RELOADABLE, RESTART)):
        default = DEFAULTS.get(key)
        if entry.boolean is None or default is None or entry.boolean == default:
            return None  # not read as a boolean, or a flag 1.40 has not got: Envoy ignores both
        if key in FOLLOWED or key in INERT:
            return None
        return (f"{entry.raw} would change what Envoy 1.40 does (the flag's default is "
                f"{'true' if default else 'false'}), and meshpy does not have that behaviour")
    for prefix, why in NOT_FOLLOWED.items():
        if key.startswith(prefix):
            return f"{why}; meshpy does not"
    return None
