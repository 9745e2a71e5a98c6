from tests.conftest import materialize, recent_sessions


def test_one_session_materializes_with_passing_checks(with_universe, lake, market_data, instance):
    key = recent_sessions("krx", 1)[0]
    result = materialize(
        "krx",
        ("daily_prices", "indicators"),
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_key=key,
    )
    assert result.success
    outcomes = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert outcomes["price_relationships"] and outcomes["completeness"]
