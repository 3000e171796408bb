"""Results -> pandas tables and matplotlib charts. Reads records; never trains."""
