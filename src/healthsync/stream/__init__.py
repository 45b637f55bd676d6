"""The stream processor: consume readings, detect anomalies, build FHIR, write sinks."""
