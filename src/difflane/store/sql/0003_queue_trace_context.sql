-- The W3C trace context (JSON of traceparent/tracestate) of the request that queued the job, so the
-- worker's spans join the job's trace. NULL while tracing is off.
ALTER TABLE queue ADD COLUMN trace_context TEXT;
