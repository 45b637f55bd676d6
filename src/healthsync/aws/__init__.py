"""AWS integrations: the Lambda that launches job workers on EC2, and CloudWatch.

Every client honours the standard ``AWS_ENDPOINT_URL`` (and per-service)
variables through boto3, so moto's server mode, LocalStack or a real account
all work unchanged. boto3 is the ``aws`` extra.
"""
