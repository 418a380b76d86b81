-- Who each job belongs to (an owner name, checked by the controller): workers keep each
-- owner's builds and executors apart. Jobs from before owners existed were the key holder's.
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'cli';
