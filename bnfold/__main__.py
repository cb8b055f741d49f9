from bnfold.cli.app import main

main()
