-- Usage bounded by the model's tokenizer where the control plane has one (control_plane/trust/usage.py).
--
-- The recorder counts the relayed text with the tokenizer of each model the job may be of (in a worker thread,
-- before the recording statement) and writes model -> completion bound here with the result; the submitting
-- replica wrote the prompt bound into the stored request (`usage_bound`: {"model", "prompt"}). The trigger uses
-- a bound only when it was made for the job's own model (a fallback that moved the job to another model, or a
-- recorder without that tokenizer, leaves the byte bounds of 0080). No extra statement: the bounds travel in
-- the statements the job's submission and recording make anyway.
ALTER TABLE jobs ADD COLUMN completion_bounds jsonb;

CREATE OR REPLACE FUNCTION infernet_check_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b record;
    prompt_cap bigint;
    completion_cap bigint;
    counted bigint;
    max_tokens bigint;
BEGIN
    IF NEW.result IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO b FROM infernet_usage_bounds(NEW.request, NEW.result);
    prompt_cap := b.prompt_cap;
    IF NEW.request -> 'usage_bound' ->> 'model' = NEW.model
       AND jsonb_typeof(NEW.request -> 'usage_bound' -> 'prompt') = 'number' THEN
        prompt_cap := (NEW.request -> 'usage_bound' ->> 'prompt')::bigint;
    END IF;
    completion_cap := b.completion_cap;
    IF jsonb_typeof(NEW.completion_bounds -> NEW.model) = 'number' THEN
        max_tokens := CASE WHEN jsonb_typeof(NEW.request #> '{params,max_tokens}') = 'number'
                           THEN floor((NEW.request #>> '{params,max_tokens}')::numeric)::bigint ELSE 512 END;
        -- The tokens that made a stop string were generated and counted, then cut from the text: at most one
        -- token per byte of the longest stop string.
        counted := (NEW.completion_bounds ->> NEW.model)::bigint + COALESCE((
            SELECT max(octet_length(s)) FROM jsonb_array_elements_text(
                CASE WHEN jsonb_typeof(NEW.request #> '{params,stop}') = 'array'
                     THEN NEW.request #> '{params,stop}' ELSE '[]'::jsonb END) AS s), 0);
        completion_cap := LEAST(max_tokens, counted);
    END IF;
    IF COALESCE(NEW.prompt_tokens, 0) > prompt_cap OR COALESCE(NEW.completion_tokens, 0) > completion_cap THEN
        NEW.prompt_tokens := LEAST(NEW.prompt_tokens, prompt_cap);
        NEW.completion_tokens := LEAST(NEW.completion_tokens, completion_cap);
        IF jsonb_typeof(NEW.result -> 'usage') = 'object' THEN
            NEW.result := jsonb_set(NEW.result, '{usage}', (NEW.result -> 'usage') || jsonb_build_object(
                'prompt_tokens', COALESCE(NEW.prompt_tokens, 0), 'completion_tokens', COALESCE(NEW.completion_tokens, 0)));
        END IF;
    END IF;
    RETURN NEW;
END $$;
