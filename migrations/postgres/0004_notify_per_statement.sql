-- With group commit one INSERT carries many messages: notify once per
-- statement, with the highest position it inserted, instead of once per row.
-- Listeners read every row up to that position, so nothing is lost.
DROP TRIGGER messages_notify ON messages;

CREATE OR REPLACE FUNCTION herald_notify_message() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('herald_messages', (SELECT max(position) FROM inserted)::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_notify AFTER INSERT ON messages
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION herald_notify_message();
