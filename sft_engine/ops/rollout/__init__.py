"""``sft-engine rollout``: switch a running server to another model version without dropping a request.

``runner`` drives the steps and the way back; ``check`` is the gate the new version
passes on the live server before the switch.
"""
