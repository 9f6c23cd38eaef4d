"""Entitlement policies: YAML rules with CEL conditions that decide which tokens a viewer gets.

Import from the modules: `loader.load_policy`, `store.PolicyStore`, `engine.Policy`,
`testing.run_policy_tests`, `commands.check_command` / `test_command`, `model` for the values.
This package module imports nothing, so `gateway.policy.model` stays free of import cycles.
"""
