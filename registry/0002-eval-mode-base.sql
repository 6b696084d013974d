-- Evaluation rows say how the adapter was applied and on which base:
-- mode is "base", "unmerged" or "merged" (NULL for rows recorded before
-- this migration), base_name the base model's name for people (the
-- folder name of lora-eval --model), beside base_hash.
ALTER TABLE evals ADD COLUMN mode TEXT;
ALTER TABLE evals ADD COLUMN base_name TEXT;
